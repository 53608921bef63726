"""Collect the metrics JSONs of a run and write ``report.md`` with a table, plots and sample grids.

Input: metrics JSON files written by ``groupdiff score`` (given explicitly, or every ``metrics*.json``
under a folder). Output folder: ``report.md``, ``metric_vs_group_size.png``,
``s_cross_vs_<metric>.png`` (with the Pearson correlation over evaluations) and copies of the sample
grids (``grid_<i>.png``), so the folder is self-contained. An evaluation scored with the real-data
floor (``floor`` in its JSON) gets a ``floor`` row right below it: the same metrics of held-out real
images, as many as samples, so every number is read beside what real data scores.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from ..atomic import write_text_atomic
from .plots import plot_metric_vs_group_size, plot_s_cross_vs_metric

METRIC_ORDER = ("fid", "fid_ci_low", "fid_ci_high", "sfid", "is", "precision", "recall", "fd_fmnist",
                "fd_fmnist_ci_low", "fd_fmnist_ci_high", "class_agreement", "is_fmnist", "precision_fmnist",
                "recall_fmnist", "s_cross", "classifier_test_accuracy")
CONTEXT_COLUMNS = ("mode", "group_size", "cfg_scale", "sampler", "num_steps", "weights")


def collect_evaluations(inputs: list[str | Path]) -> list[dict]:
    """Load metrics JSONs from files and folders (``**/metrics*.json``), sorted by (mode, N, cfg, path)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(item.rglob("metrics*.json"))
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"report input {str(item)!r} is neither a metrics JSON nor a folder")
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        if "metrics" not in data:
            raise ValueError(f"{path} is not a metrics JSON written by `groupdiff score` (no 'metrics' key)")
        data.setdefault("context", {})
        data["json"] = str(path)
        rows.append(data)
    if not rows:
        raise ValueError(f"no metrics JSON found in {[str(i) for i in inputs]}")
    key = lambda r: (str(r["context"].get("mode")), r["context"].get("group_size") or 0,
                     r["context"].get("cfg_scale") or 0, r["json"])
    return sorted(rows, key=key)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def primary_metric(rows: list[dict]) -> str | None:
    """The Fréchet-type metric to plot: ``fid`` when present, else the first ``fd_*``."""
    names = {k for r in rows for k in r["metrics"]}
    if "fid" in names:
        return "fid"
    fd = sorted(n for n in names if n.startswith("fd_"))
    return fd[0] if fd else None


def build_report(inputs: list[str | Path], out_dir: str | Path, title: str = "GroupDiff evaluation") -> Path:
    """Write the report folder; returns the path of ``report.md``."""
    rows = collect_evaluations(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {k for r in rows for k in r["metrics"]}
    metrics = [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))
    lines = [f"# {title}", "", f"{len(rows)} evaluation(s).", "",
             "| # | " + " | ".join(CONTEXT_COLUMNS) + " | samples | " + " | ".join(metrics) + " |",
             "|---" * (len(CONTEXT_COLUMNS) + len(metrics) + 2) + "|"]
    for i, row in enumerate(rows):
        ctx = [_fmt(row["context"].get(c)) for c in CONTEXT_COLUMNS]
        vals = [_fmt(row["metrics"].get(m)) for m in metrics]
        lines.append(f"| {i} | " + " | ".join(ctx) + f" | {row.get('num_samples', '-')} | " + " | ".join(vals) + " |")
        floor = row.get("floor")
        if floor:
            info = row.get("floor_info") or {}
            ctx = ["real-data floor"] + ["-"] * (len(CONTEXT_COLUMNS) - 1)
            vals = [_fmt(floor.get(m)) for m in metrics]
            lines.append(f"| {i} floor | " + " | ".join(ctx) + f" | {info.get('num_images', '-')} | " + " | ".join(vals) + " |")
    primary = primary_metric(rows)
    if primary:
        lines += ["", "## Plots", ""]
        vs_n = plot_metric_vs_group_size(rows, primary, out / "metric_vs_group_size.png")
        if vs_n:
            lines += [f"![{primary} vs group size]({vs_n.name})", ""]
        scatter, r = plot_s_cross_vs_metric(rows, primary, out / f"s_cross_vs_{primary}.png")
        if scatter:
            corr = f"{r:.3f}" if r is not None else "n/a (fewer than 3 evaluations with S_cross)"
            lines += [f"Pearson correlation of mean S_cross with {primary}: **{corr}**", "",
                      f"![S_cross vs {primary}]({scatter.name})", ""]
    grids = [(i, row["context"].get("grid")) for i, row in enumerate(rows)]
    grids = [(i, Path(g)) for i, g in grids if g and Path(g).is_file()]
    if grids:
        lines += ["## Sample grids (one group per row)", ""]
        for i, grid in grids:
            target = out / f"grid_{i}.png"
            shutil.copyfile(grid, target)
            ctx = rows[i]["context"]
            lines += [f"**#{i}** {ctx.get('mode')} N={ctx.get('group_size')} cfg={ctx.get('cfg_scale')}", "",
                      f"![grid {i}]({target.name})", ""]
    lines += ["## Sources", ""] + [f"- #{i}: `{row['json']}` (samples `{row.get('samples')}`)" for i, row in enumerate(rows)]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report
