"""PNG plots of evaluations (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation of finite pairs; None with fewer than 3 pairs or a constant side."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    a, b = np.asarray(pairs, dtype=np.float64).T
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def plot_metric_vs_group_size(rows: list[dict], metric: str, path: Path) -> Path | None:
    """One line per (mode, cfg scale): ``metric`` against group size N. None if nothing to plot."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        value, n = row["metrics"].get(metric), row["context"].get("group_size")
        if value is None or n is None or not math.isfinite(value):
            continue
        label = f"{row['context'].get('mode', '?')} cfg {row['context'].get('cfg_scale', '?')}"
        series.setdefault(label, []).append((int(n), float(value)))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("group size N")
    ax.set_ylabel(metric)
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_s_cross_vs_metric(rows: list[dict], metric: str, path: Path) -> tuple[Path | None, float | None]:
    """Scatter of mean S_cross against ``metric`` with the Pearson r in the title."""
    pts = [(row["metrics"].get("s_cross"), row["metrics"].get(metric)) for row in rows]
    pts = [(s, m) for s, m in pts if s is not None and m is not None and math.isfinite(s) and math.isfinite(m)]
    if not pts:
        return None, None
    r = pearson([p[0] for p in pts], [p[1] for p in pts])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xlabel("mean S_cross")
    ax.set_ylabel(metric)
    ax.set_title(f"S_cross vs {metric}: r = {r:.3f}" if r is not None else f"S_cross vs {metric}: r n/a (< 3 points)")
    ax.grid(alpha=0.3)
    path = _save(fig, path)
    plt.close(fig)
    return path, r
