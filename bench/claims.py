"""Benchmark: the paper's claims measured on the built-in data (issue 11, item 5). A benchmark, not a test.

It mirrors the paper's *resumed* recipe ("+ GroupDiff-4 (resumed)") at the tiny-fmnist scale, through the
platform's own flows on the embedded records (no servers; ``flows.embedded.embedded_records``):

1. ``groupdiff-pipeline`` trains a baseline for S steps (``--s``, default the preset's ``train.steps``).
2. For every seed, the ``study`` flow continues that baseline's EMA weights (``init_from=pretrained:...``,
   the way retrain-nightly fine-tunes the champion) for S' more steps (``--s-prime``) as (a) a baseline,
   (b) GroupDiff-l with N in ``--group-sizes`` on similarity groups, (c) GroupDiff-l with N = 4 on class
   groups and on random groups. Every arm sees the same images per step (``pipeline.batch_images``) and
   the same number of steps, and is sampled and scored under one evaluation protocol (the preset's sampler,
   steps and cfg; ``--num-samples`` class-balanced samples; fd_fmnist against the same reference; the same
   real-data floor). Arms already computed are cache hits (content digests), so the baseline arm that both
   study calls of a seed contain trains once.

It reports, with the seed spread (mean, std and every seed's value): fd_fmnist, class_agreement,
precision_fmnist, recall_fmnist and S_cross per arm, the real-data floor, the group-benefit probe over
training (``probe/gain_vs_single``, ``probe/shuffled_over_group`` every ``--probe-every`` steps, read from each
arm's MLflow training run), and the correlation of S_cross with fd over the GroupDiff-l runs with N >= 3
(S_cross is 0 by definition at N = 2, where an image has one other member). The claims,
each printed as held / not held with its numbers:

* ``groupdiff_l_beats_baseline``: GroupDiff-l-4 on similarity groups has a lower fd than the baseline
  continued for the same steps;
* ``larger_n_is_better``: on similarity groups, fd falls with every larger N;
* ``similarity_class_random``: at N = 4, fd(similarity) < fd(class) < fd(random);
* ``s_cross_correlates_with_fd``: |Pearson r(S_cross, fd)| >= 0.8 over the GroupDiff-l runs with N >= 3.

A comparison "A beats B" holds only when A's seed mean is lower AND the seed ranges do not overlap
(max over A's seeds < min over B's): a difference inside the seed spread is reported as not held. With one
seed this reduces to comparing the two values. ``--quick`` is a smoke setting (a few minutes on 2 CPU cores:
tiny step counts, few samples, one seed, N = 2 and 4, a 1-epoch classifier): its verdicts are labelled
smoke and are no evidence either way.

Results go to ``--out`` (default ``docs/results/claims``; with ``--quick`` ``outputs/claims-quick/results``):
``claims.json`` (everything, with the exact command), ``claims.md`` (the table and verdicts), plots
``fd_vs_n.png``, ``fd_by_grouping.png``, ``s_cross_vs_fd.png``, ``probe.png``, and the sample grid each arm
wrote (``grids/<arm>-seed<s>.png``, one row per class). The records (store, MLflow, Prefect home, work
folders with checkpoints) go to ``--work`` (default ``outputs/claims``; ``outputs/claims-quick`` with
``--quick``).

Before starting it prints the planned wall time from the measured cost model below. Prints progress,
then as its LAST line one JSON object: smoke, planned_s, wall_s, floor, arms (per-arm mean/std/values of
each metric), claims (verdict + numbers) and results (the results folder).

Usage: .venv/bin/python bench/claims.py [--quick] [--s 3600] [--s-prime 7200] [--seeds 0 1]
       [--group-sizes 2 4 8] [--num-samples 800] [--probe-every 300] [--out DIR] [--work DIR]
       [--set pipeline.FIELD=VALUE | SECTION.FIELD=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import Field, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from groupdiff.config_base import Section  # noqa: E402
from groupdiff.train.checkpoint import CheckpointDir  # noqa: E402

# The cost model of the planned wall time (measured on the project machine, 2 CPU cores, one thread each).
STEP_S = 0.085  # one tiny-preset training step at batch 64 on one core
EVAL_S_PER_IMAGE = 15.0 / 400  # sampling + scoring: ~15 s per 400 images
L_STEP_COST = 1.05  # a GroupDiff-l step relative to a baseline step (bench/train.py l_cost_ratio)
FMNIST_TRAIN_IMAGES = 60_000  # the built-in training split (the classifier's "all images")
CLASSIFIER_S_PER_IMAGE_EPOCH = 110.0 / (FMNIST_TRAIN_IMAGES * 4)  # the built-in classifier: ~110 s for 4 epochs of 60k
RUN_OVERHEAD_S = 15.0  # per pipeline run: training subprocess start-up, Prefect tasks, records, embed + mine (--quick)

GROUPING_N = 4  # the group size at which grouping modes are compared (the paper's GroupDiff-l-4)
R_THRESHOLD = 0.8  # |r(S_cross, fd)| that counts as a strong correlation
S_CROSS_MIN_N = 3  # S_cross is 0 by definition at N = 2 (one other member): such runs carry no S_cross signal
METRICS = ("fd_fmnist", "class_agreement", "precision_fmnist", "recall_fmnist", "s_cross")
FD = "fd_fmnist"
PROBE_KEYS = ("probe/gain_vs_single", "probe/shuffled_over_group", "probe/loss_group", "probe/loss_single")
PRESET = "tiny-fmnist"
FULL_OUT, FULL_WORK = "docs/results/claims", "outputs/claims"
QUICK_WORK = "outputs/claims-quick"


class ClaimsSettings(Section):
    """One claims study: the resumed recipe's step counts, the arms, seeds and the evaluation size."""

    s: int = Field(..., ge=1, le=10_000_000, description="Steps of the baseline that every arm resumes from.")
    s_prime: int = Field(..., ge=1, le=10_000_000, description="Steps each arm continues for (equal images seen).")
    seeds: list[int] = Field(..., min_length=1, max_length=16, description="Seeds of the continued runs (training, mining, sampling).")
    group_sizes: list[int] = Field(..., min_length=1, max_length=8, description="N of the GroupDiff-l arms on similarity groups.")
    num_samples: int = Field(..., ge=10, le=100_000, description="Class-balanced samples per evaluation (a multiple of 10 x every N).")
    probe_every: int = Field(..., ge=1, le=10_000_000, description="Steps between group-benefit probes of the GroupDiff-l arms.")
    classifier_train_limit: int | None = Field(None, ge=0, description="Images the fd_fmnist classifier trains on (empty = the preset's).")
    classifier_epochs: int | None = Field(None, ge=1, description="Epochs of the fd_fmnist classifier (empty = the preset's).")
    smoke: bool = Field(False, description="A smoke setting: verdicts are labelled smoke, not evidence.")

    @model_validator(mode="after")
    def _check(self) -> "ClaimsSettings":
        bad = [n for n in self.group_sizes if not 2 <= n <= 16]
        if bad:
            raise ValueError(f"group sizes {bad} outside [2, 16]")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.group_sizes)) != len(self.group_sizes):
            raise ValueError(f"seeds {self.seeds} / group sizes {self.group_sizes} hold a duplicate")
        for n in self.all_sizes():
            if self.num_samples % (10 * n):
                raise ValueError(f"num_samples={self.num_samples} is not a multiple of 10 classes x N={n}")
        return self

    def all_sizes(self) -> list[int]:
        """Every N trained: the similarity sizes and the grouping comparison's N."""
        return sorted(set(self.group_sizes) | {GROUPING_N})


def default_settings(quick: bool, preset_steps: int) -> dict:
    """The full setting (S = the preset's steps, S' = 2 S; see ``--dry-run`` for its planned time) or the
    smoke setting (a few minutes)."""
    if quick:
        return {"s": 150, "s_prime": 60, "seeds": [0], "group_sizes": [2, 4], "num_samples": 80, "probe_every": 20,
                "classifier_train_limit": 6000, "classifier_epochs": 1, "smoke": True}
    s_prime = 2 * preset_steps
    return {"s": preset_steps, "s_prime": s_prime, "seeds": [0, 1], "group_sizes": [2, 4, 8], "num_samples": 800,
            "probe_every": max(1, s_prime // 24)}


def arm_names(settings: ClaimsSettings) -> list[str]:
    """Arm keys in report order (the study flow's names): the baseline, similarity by N, class, random."""
    names = ["baseline"] + [f"groupdiff-l N={n} similarity" for n in settings.all_sizes()]
    return names + [f"groupdiff-l N={GROUPING_N} {mode}" for mode in ("class", "random")]


def planned_seconds(settings: ClaimsSettings, batch_images: int, probe_groups: int, classifier_images: int,
                    classifier_epochs: int) -> dict[str, float]:
    """Planned wall time per part from the measured cost model (sequential arms, one thread each)."""
    l_arms = settings.all_sizes() + [GROUPING_N, GROUPING_N]  # similarity sizes, then class and random
    probes = settings.s_prime // settings.probe_every
    probe_steps = sum(probes * probe_groups * n / batch_images for n in l_arms)  # 3 forwards ~ one step
    seeds = len(settings.seeds)
    train = STEP_S * (settings.s + seeds * (settings.s_prime * (1 + L_STEP_COST * len(l_arms)) + probe_steps))
    runs = 1 + seeds * (1 + len(l_arms))
    parts = {"train_s": train, "evaluate_s": runs * settings.num_samples * EVAL_S_PER_IMAGE,
             "classifier_s": CLASSIFIER_S_PER_IMAGE_EPOCH * classifier_images * classifier_epochs,
             "overhead_s": runs * RUN_OVERHEAD_S}
    return {**parts, "total_s": sum(parts.values())}


def spread(values: list[float]) -> dict:
    """Mean, sample std (0 for one value) and the values."""
    values = [float(v) for v in values if v is not None and v == v]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def beats(a: dict, b: dict) -> dict:
    """Whether arm ``a`` (spread of fd) beats ``b``: lower mean and seed ranges apart (lower is better)."""
    lower = a["mean"] < b["mean"]
    apart = bool(a["values"] and b["values"]) and max(a["values"]) < min(b["values"])
    return {"held": bool(lower and apart), "lower_mean": bool(lower), "beyond_seed_spread": apart,
            "a_mean": a["mean"], "b_mean": b["mean"], "a_values": a["values"], "b_values": b["values"]}


def finite(obj):
    """``obj`` with NaN floats as None (the last line must be strict JSON)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation (NaN with fewer than 3 points or no variance)."""
    if len(xs) < 3:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def check_claims(arms: dict[str, dict], points: list[tuple[float, float]], settings: ClaimsSettings) -> dict:
    """The four claims, each {claim, verdict, held, detail, numbers} from the per-arm fd spreads and the
    (S_cross, fd) points of the GroupDiff-l runs."""
    fd = {name: arm[FD] for name, arm in arms.items()}
    label = " (smoke, not evidence)" if settings.smoke else ""

    def verdict(held: bool) -> str:
        return ("held" if held else "not held") + label

    def fmt(s: dict) -> str:
        return f"{s['mean']:.3g}" + (f" +- {s['std']:.2g}" if len(s["values"]) > 1 else "")

    out = {}
    l4 = f"groupdiff-l N={GROUPING_N} similarity"
    c = beats(fd[l4], fd["baseline"])
    others = {n: fmt(fd[n]) for n in fd if n.startswith("groupdiff-l")}
    out["groupdiff_l_beats_baseline"] = {
        "claim": "GroupDiff-l beats the baseline at equal steps", "held": c["held"], "verdict": verdict(c["held"]),
        "detail": f"fd {l4} {fmt(fd[l4])} vs baseline {fmt(fd['baseline'])}"
                  f"{'' if c['lower_mean'] else ' (higher mean)'}"
                  f"{'' if c['beyond_seed_spread'] or not c['lower_mean'] else ' (within the seed spread)'}; "
                  f"all GroupDiff-l arms: {others}", "numbers": c}
    sizes = sorted(settings.group_sizes)
    pairs = [beats(fd[f"groupdiff-l N={b} similarity"], fd[f"groupdiff-l N={a} similarity"])
             for a, b in zip(sizes, sizes[1:])]
    held = bool(pairs) and all(p["held"] for p in pairs)
    out["larger_n_is_better"] = {
        "claim": "larger N is better (similarity groups)", "held": held, "verdict": verdict(held),
        "detail": "fd by N: " + ", ".join(f"N={n} {fmt(fd[f'groupdiff-l N={n} similarity'])}" for n in sizes)
                  + ("" if pairs else " (needs two group sizes)"), "numbers": pairs}
    g = {m: fd[f"groupdiff-l N={GROUPING_N} {m}"] for m in ("similarity", "class", "random")}
    pairs = [beats(g["similarity"], g["class"]), beats(g["class"], g["random"])]
    held = all(p["held"] for p in pairs)
    out["similarity_class_random"] = {
        "claim": f"similarity > class > random (N={GROUPING_N})", "held": held, "verdict": verdict(held),
        "detail": "fd " + ", ".join(f"{m} {fmt(s)}" for m, s in g.items()), "numbers": pairs}
    r = pearson([p[0] for p in points], [p[1] for p in points])
    held = r == r and abs(r) >= R_THRESHOLD
    out["s_cross_correlates_with_fd"] = {
        "claim": f"|r(S_cross, fd)| >= {R_THRESHOLD}", "held": bool(held), "verdict": verdict(bool(held)),
        "detail": f"r = {r:.3f} over {len(points)} GroupDiff-l runs with N >= {S_CROSS_MIN_N} (S_cross is 0 by "
                  "definition at N = 2); the paper: higher S_cross, lower fd, i.e. r < 0",
        "numbers": {"r": r, "points": points}}
    return out


def probe_history(records, run_id: str | None) -> dict[str, list[tuple[int, float]]]:
    """The group-benefit probe's metrics over training steps, from the arm's MLflow training run."""
    from flows.records import Records

    if not run_id:
        return {}
    client = Records(records).mlflow
    return {key: sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run_id, key))
            for key in PROBE_KEYS}


def store_path(uri: str) -> Path:
    """Local folder of a ``file://`` store object (the embedded records keep the store in a folder)."""
    from registry.uri import parse_uri

    parsed = parse_uri(uri)
    if parsed.scheme != "file":
        raise ValueError(f"{uri!r}: the claims study runs on the embedded records (a file:// store)")
    return Path(parsed.path)


def slug(name: str) -> str:
    """A file-name form of an arm name."""
    return name.replace(" ", "-").replace("=", "")


def _plot_setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots(result: dict, out: Path) -> list[str]:
    """fd vs N, fd per grouping, S_cross vs fd and the probe over steps (PNG files under ``out``)."""
    plt = _plot_setup()
    figures = {"fd_vs_n.png": fd_vs_n_figure, "fd_by_grouping.png": fd_by_grouping_figure,
               "s_cross_vs_fd.png": s_cross_vs_fd_figure, "probe.png": probe_figure}
    for name, draw in figures.items():
        fig = draw(plt, result)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    return list(figures)


def _smoke_tag(result: dict) -> str:
    return " [smoke]" if result["settings"]["smoke"] else ""


def _refs(ax, result: dict) -> None:
    """The reference lines of an fd axis: the continued baseline (with its seed band), the checkpoint every arm
    resumed from and the real-data floor."""
    settings, floor = result["settings"], result["floor"]
    base = result["arms"]["baseline"][FD]
    ax.axhline(base["mean"], color="k", label=f"baseline (+{settings['s_prime']} steps)")
    if base["std"]:
        ax.axhspan(base["mean"] - base["std"], base["mean"] + base["std"], color="k", alpha=0.1)
    if result.get("pretrained", {}).get(FD) is not None:
        ax.axhline(result["pretrained"][FD], color="gray", ls=":", label=f"resumed from ({settings['s']} steps)")
    if floor.get(FD) is not None:
        ax.axhline(floor[FD], color="g", ls="--", label="real-data floor")


def fd_vs_n_figure(plt, result: dict):
    """fd of the similarity arms over N (seed mean +- std and every seed), with the references."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = sorted(result["settings"]["group_sizes"])
    sim = [result["arms"][f"groupdiff-l N={n} similarity"][FD] for n in sizes]
    ax.errorbar(sizes, [s["mean"] for s in sim], yerr=[s["std"] for s in sim], marker="o", capsize=4,
                label="GroupDiff-l, similarity groups")
    for n, s in zip(sizes, sim):
        ax.scatter([n] * len(s["values"]), s["values"], color="C0", s=10, alpha=0.5)
    _refs(ax, result)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("group size N")
    ax.set_ylabel(f"{FD} (lower is better)")
    ax.set_title("fd vs N" + _smoke_tag(result))
    ax.legend(fontsize=7)
    return fig


def fd_by_grouping_figure(plt, result: dict):
    """fd at N = GROUPING_N per grouping mode (bars of the seed mean, dots per seed), with the references."""
    fig, ax = plt.subplots(figsize=(6, 4))
    modes = ("similarity", "class", "random")
    g = [result["arms"][f"groupdiff-l N={GROUPING_N} {m}"][FD] for m in modes]
    ax.bar(modes, [s["mean"] for s in g], yerr=[s["std"] for s in g], capsize=4, color="C1", alpha=0.7)
    for i, s in enumerate(g):
        ax.scatter([i] * len(s["values"]), s["values"], color="k", s=10)
    _refs(ax, result)
    ax.set_ylabel(f"{FD} (lower is better)")
    ax.set_title(f"GroupDiff-l N={GROUPING_N} by grouping" + _smoke_tag(result))
    ax.legend(fontsize=7)
    return fig


def s_cross_vs_fd_figure(plt, result: dict):
    """One point per GroupDiff-l run with N >= S_CROSS_MIN_N: its S_cross against its fd, titled with r."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in (r for r in result["runs"] if r["arm"] != "baseline"):
        m = run["metrics"]
        if m.get("s_cross") is not None and run["group_size"] >= S_CROSS_MIN_N:
            ax.scatter(m["s_cross"], m[FD], color=f"C{arm_names_index(result, run['arm'])}", label=run["arm"])
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    r = result["claims"]["s_cross_correlates_with_fd"]["numbers"]["r"]
    ax.set_xlabel("S_cross (mean cross-sample attention of the samples)")
    ax.set_ylabel(FD)
    ax.set_title(f"S_cross vs fd: r = {r:.2f}" + _smoke_tag(result))
    return fig


def probe_figure(plt, result: dict):
    """The group-benefit probe over the continued run's steps, one line per run (gain, shuffled/group)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run in result["runs"]:
        for ax, key in zip(axes, PROBE_KEYS[:2]):
            pts = run.get("probe", {}).get(key) or []
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".",
                        color=f"C{arm_names_index(result, run['arm'])}", label=f"{run['arm']} s{run['seed']}")
    for ax, key in zip(axes, PROBE_KEYS[:2]):
        ax.set_xlabel(f"step of the continued run (of {result['settings']['s_prime']})")
        ax.set_ylabel(key)
    axes[0].axhline(0.0, color="k", lw=0.5)
    axes[1].axhline(1.0, color="k", lw=0.5)
    axes[0].legend(fontsize=6)
    fig.suptitle("group-benefit probe" + _smoke_tag(result))
    return fig


def arm_names_index(result: dict, arm: str) -> int:
    """A stable colour index per arm."""
    return list(result["arms"]).index(arm)


def markdown(result: dict) -> str:
    """The table (mean +- std over seeds, the floor's row) and the verdicts."""
    st = result["settings"]
    lines = [f"# The paper's claims on the built-in data{' (SMOKE: not evidence)' if st['smoke'] else ''}", "",
             f"Command: `{result['command']}`", "",
             f"Resumed recipe: baseline {st['s']} steps, then each arm {st['s_prime']} more steps at "
             f"{result['batch_images']} images per step; seeds {st['seeds']}; {st['num_samples']} samples per "
             f"evaluation, protocol `{result['protocol']}`. Mean +- std over seeds (lower fd is better).", "",
             "| arm | " + " | ".join(METRICS) + " | probe gain_vs_single (last) |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for name, arm in result["arms"].items():
        cells = [(f"{arm[k]['mean']:.4g}" + (f" +- {arm[k]['std']:.2g}" if len(arm[k]['values']) > 1 else ""))
                 if arm[k]["values"] else "" for k in METRICS]
        gain = arm.get("probe_last_gain_vs_single")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'' if gain is None else f'{gain:.4f}'} |")
    if result.get("pretrained"):
        p = result["pretrained"]
        lines.append(f"| resumed from ({st['s']} steps) | " + " | ".join(
            f"{p[k]:.4g}" if k in p else "" for k in METRICS) + " | |")
    f = result["floor"]
    lines.append("| real-data floor | " + " | ".join(f"{f[k]:.4g}" if k in f else "" for k in METRICS) + " | |")
    lines += ["", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} | {c['detail']} |" for c in result["claims"].values()]
    lines += ["", f"Wall time {result['wall_s'] / 60:.1f} min (planned {result['planned']['total_s'] / 60:.1f} min)."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke setting (minutes; verdicts are not evidence)")
    parser.add_argument("--s", type=int, help="baseline steps every arm resumes from (default: the preset's train.steps)")
    parser.add_argument("--s-prime", type=int, help="steps each arm continues for (default: 2 x S)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the continued runs (default 0 1)")
    parser.add_argument("--group-sizes", type=int, nargs="+", help="N of the similarity arms (default 2 4 8)")
    parser.add_argument("--num-samples", type=int, help="samples per evaluation (default 800)")
    parser.add_argument("--probe-every", type=int, help="steps between group-benefit probes (default S'/24)")
    parser.add_argument("--out", help=f"results folder (default {FULL_OUT}; --quick: {QUICK_WORK}/results)")
    parser.add_argument("--work", help=f"records folder (default {FULL_WORK}; --quick: {QUICK_WORK})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline.FIELD=VALUE (PipelineParams, e.g. pipeline.data_limit=0) or a preset "
                             "override SECTION.FIELD=VALUE (e.g. train.group_ratio=0.5), applied to every arm")
    parser.add_argument("--dry-run", action="store_true", help="print the settings and the planned wall time, run nothing")
    return parser


def resolve_settings(args: argparse.Namespace, preset_steps: int) -> ClaimsSettings:
    """The study's settings: the options given, the rest from the full or smoke defaults."""
    given = {"s": args.s, "s_prime": args.s_prime, "seeds": args.seeds, "group_sizes": args.group_sizes,
             "num_samples": args.num_samples, "probe_every": args.probe_every}
    defaults = default_settings(args.quick, preset_steps)
    if args.s_prime is not None and args.probe_every is None and not args.quick:
        defaults["probe_every"] = max(1, args.s_prime // 24)
    return ClaimsSettings(**{**defaults, **{k: v for k, v in given.items() if v is not None}})


def pipeline_params(settings: ClaimsSettings, pipeline_settings: dict, preset_overrides: list[str], **update):
    """The PipelineParams of one pipeline run of the study (every arm shares all but ``update``)."""
    from flows.params import PipelineParams

    return PipelineParams(**{"preset": PRESET, "overrides": preset_overrides, "register_models": False,
                             "num_samples": settings.num_samples,
                             "classifier_train_limit": settings.classifier_train_limit,
                             "classifier_epochs": settings.classifier_epochs, **pipeline_settings, **update})


class Setup(NamedTuple):
    """One claims study resolved from its command line: settings, folders, the stage-1 run and the plan."""

    settings: ClaimsSettings
    pipeline_settings: dict
    preset_overrides: list[str]
    overrides: list[str]  # the --set items as given (recorded in claims.json)
    work: Path  # the records (store, MLflow, Prefect home, work folders)
    out: Path  # the results folder
    command: str  # the exact command, recorded
    stage1: Any  # PipelineParams of the stage-1 baseline every arm resumes from
    base_config: Any  # its GroupDiffConfig: the evaluation protocol (sampler, steps, cfg) every arm shares
    plan: dict[str, float]  # planned wall time per part

    def params(self, **update):
        return pipeline_params(self.settings, self.pipeline_settings, self.preset_overrides, **update)


def resolve_setup(args: argparse.Namespace, argv: list[str]) -> Setup:
    """Settings, folders, the stage-1 params and the planned wall time from the parsed command line."""
    from flows.embedded import split_overrides
    from groupdiff.config import load_preset

    pipeline_settings, preset_overrides = split_overrides(args.set)
    preset = load_preset(PRESET, preset_overrides)
    settings = resolve_settings(args, preset.train.steps)
    work = Path(args.work or (QUICK_WORK if args.quick else FULL_WORK)).resolve()
    out = Path(args.out or (f"{QUICK_WORK}/results" if args.quick else FULL_OUT)).resolve()
    command = shlex.join([".venv/bin/python", "bench/claims.py", *argv])
    stage1 = pipeline_params(settings, pipeline_settings, preset_overrides, variants=["baseline"],
                             train_steps=settings.s, seed=settings.seeds[0], probe_every=0)
    base_config = stage1.config("baseline")
    clf = base_config.embed.classifier
    plan = planned_seconds(settings, stage1.batch_images, base_config.train.probe_groups,
                           clf.train_limit or FMNIST_TRAIN_IMAGES, clf.epochs)
    return Setup(settings, pipeline_settings, preset_overrides, args.set, work, out, command, stage1, base_config,
                 plan)


def announce(setup: Setup) -> None:
    """Print the settings, the arms and the planned wall time before anything runs."""
    settings, plan = setup.settings, setup.plan
    print(f"[claims] {'SMOKE setting (--quick): verdicts are not evidence; ' if settings.smoke else ''}"
          f"S={settings.s}, S'={settings.s_prime}, seeds {settings.seeds}, arms {arm_names(settings)}, "
          f"{settings.num_samples} samples each, cfg {setup.base_config.guidance.cfg_scale}", flush=True)
    print(f"[claims] planned wall time {plan['total_s'] / 60:.0f} min ({plan['total_s'] / 3600:.2f} h) on this "
          f"machine's measured costs: " + ", ".join(f"{k[:-2]} {v / 60:.0f} min" for k, v in plan.items()
                                                    if k != "total_s"), flush=True)


def pretrain(setup: Setup, records) -> dict:
    """Stage 1: the pipeline trains (and scores) the baseline for S steps; its result."""
    from flows.pipeline import pipeline

    print(f"[claims] stage 1: baseline for S={setup.settings.s} steps (records in {setup.work})", flush=True)
    return pipeline.with_options(flow_run_name=f"claims-pretrain-{setup.settings.s}")(params=setup.stage1,
                                                                                      records=records)


def copy_grid(row: dict, out: Path, name: str) -> str | None:
    """Copy the class grid a run wrote to ``out/grids/<name>``; its path under ``out`` (None without a grid)."""
    if not (row.get("class_grid") and Path(row["class_grid"]).is_file()):
        return None
    (out / "grids" / name).write_bytes(Path(row["class_grid"]).read_bytes())
    return f"grids/{name}"


def continue_arms(setup: Setup, init: str, records, floor: dict) -> tuple[list[dict], dict]:
    """Stage 2: per seed, two study calls continue the stage-1 weights as every arm; the runs (one per arm and
    seed, grids copied under ``out/grids``) and the real-data floor (``floor`` or the first row's)."""
    from flows.params import StudyParams
    from flows.study import study

    settings, runs = setup.settings, []
    cfg_scale = setup.base_config.guidance.cfg_scale  # the preset's evaluation protocol, shared by every arm
    for seed in settings.seeds:
        base = setup.params(init_from=init, train_steps=settings.s_prime, seed=seed,
                            probe_every=settings.probe_every, group_size=GROUPING_N)
        for sizes, modes in ((settings.group_sizes, ["similarity"]), ([GROUPING_N], ["similarity", "class", "random"])):
            print(f"[claims] seed {seed}: study over N={sizes} x {modes} (+ baseline), {settings.s_prime} steps each",
                  flush=True)
            sp = StudyParams(base=base, group_sizes=sizes, grouping_modes=modes, variants=["groupdiff-l"],
                             cfg_scales=[cfg_scale])
            result = study.with_options(flow_run_name=f"claims-seed{seed}-{'-'.join(modes)}")(params=sp, records=records)
            floor = add_runs(result["rows"], seed, runs, records, setup.out, floor)
    return runs, floor


def add_runs(rows: list[dict], seed: int, runs: list[dict], records, out: Path, floor: dict) -> dict:
    """Append one run per new arm among a study call's ``rows`` to ``runs`` (printing its metrics); the floor."""
    for row in rows:
        if any(r["arm"] == row["arm"] and r["seed"] == seed for r in runs):
            continue  # the baseline arm of the second call: a cache hit of the first
        metrics = {k: v for k, v in row["metrics"].items() if k in METRICS}
        run = {"arm": row["arm"], "seed": seed, "metrics": metrics,
               "group_size": 1 if row["arm"] == "baseline" else row["group_size"],
               "probe": probe_history(records, row.get("train_run_id")) if row["arm"] != "baseline" else {},
               "train_run_id": row.get("train_run_id"), "score_json": row.get("score_json")}
        grid = copy_grid(row, out, f"{slug(row['arm'])}-seed{seed}.png")
        if grid:
            run["grid"] = grid
        runs.append(run)
        print(f"[claims]   {row['arm']} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
              flush=True)
        floor = floor or row.get("floor") or {}
    return floor


def aggregate_arms(runs: list[dict], names: list[str]) -> dict[str, dict]:
    """Per arm: the seed spread of every metric and the mean of the probe's last gain_vs_single."""
    arms = {}
    for name in names:
        mine = [r for r in runs if r["arm"] == name]
        arms[name] = {k: spread([r["metrics"].get(k) for r in mine]) for k in METRICS}
        gains = [r["probe"]["probe/gain_vs_single"][-1][1] for r in mine if r["probe"].get("probe/gain_vs_single")]
        arms[name]["probe_last_gain_vs_single"] = statistics.fmean(gains) if gains else None
    return arms


def s_cross_points(runs: list[dict]) -> list[tuple[float, float]]:
    """(S_cross, fd) of every run with N >= S_CROSS_MIN_N that recorded S_cross."""
    return [(r["metrics"]["s_cross"], r["metrics"][FD]) for r in runs
            if r["group_size"] >= S_CROSS_MIN_N and r["metrics"].get("s_cross") is not None]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def study_result(setup: Setup, protocol: str, pretrained: dict, floor: dict, runs: list[dict], started: float) -> dict:
    """Everything the study found (what claims.json holds, less the plots): the arms, runs and claims."""
    arms = aggregate_arms(runs, arm_names(setup.settings))
    claims = check_claims(arms, s_cross_points(runs), setup.settings)
    base_config = setup.base_config
    return {"command": setup.command, "commit": git_commit(), "settings": setup.settings.model_dump(),
            "preset": PRESET, "overrides": setup.overrides, "batch_images": setup.stage1.batch_images,
            "protocol": protocol, "cfg_scale": base_config.guidance.cfg_scale, "sampler": base_config.sampler.method,
            "sampling_steps": base_config.sampler.num_steps, "records": str(setup.work), "pretrained": pretrained,
            "floor": {k: v for k, v in floor.items() if k in METRICS}, "arms": arms, "runs": runs, "claims": claims,
            "planned": setup.plan, "wall_s": time.perf_counter() - started}


def write_results(result: dict, out: Path, started: float) -> None:
    """The plots, then claims.json (with the final wall time) and claims.md under ``out``."""
    result["plots"] = plots(result, out)
    result["wall_s"] = time.perf_counter() - started
    (out / "claims.json").write_text(json.dumps(finite(result), indent=2))
    (out / "claims.md").write_text(markdown(result))


def report(result: dict, out: Path) -> None:
    """Print the table, each verdict, and as the LAST line one JSON object (the summary)."""
    arms, claims, plan = result["arms"], result["claims"], result["planned"]
    print(markdown(result))
    for c in claims.values():
        print(f"[claims] {c['claim']}: {c['verdict'].upper()} -- {c['detail']}")
    print(f"[claims] results in {out}; wall time {result['wall_s'] / 60:.1f} min (planned {plan['total_s'] / 60:.1f} min)")
    summary = {"smoke": result["settings"]["smoke"], "planned_s": round(plan["total_s"], 1),
               "wall_s": round(result["wall_s"], 1), "floor": result["floor"],
               "arms": {n: {k: {"mean": a[k]["mean"], "std": a[k]["std"]} for k in METRICS if a[k]["values"]}
                        for n, a in arms.items()},
               "claims": {k: {"verdict": c["verdict"], "detail": c["detail"]} for k, c in claims.items()},
               "results": str(out)}
    print(json.dumps(finite(summary)))


def main(argv: list[str] | None = None) -> int:
    """Run the claims study and print the results (last line: one JSON object)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    setup = resolve_setup(args, argv)
    announce(setup)
    if args.dry_run:
        print(json.dumps(finite({"dry_run": True, "settings": setup.settings.model_dump(),
                                 "planned_s": round(setup.plan["total_s"], 1), "planned": setup.plan,
                                 "arms": arm_names(setup.settings)})))
        return 0
    from flows.embedded import embedded_records

    records = embedded_records(setup.work, training_slots=1)
    first = pretrain(setup, records)
    row0 = first["rows"][0]
    init = f"pretrained:{CheckpointDir(store_path(row0['checkpoint'])).ema_file}"
    pretrained = {k: v for k, v in row0["metrics"].items() if k in METRICS}
    (setup.out / "grids").mkdir(parents=True, exist_ok=True)
    copy_grid(row0, setup.out, "resumed-from.png")
    runs, floor = continue_arms(setup, init, records, row0.get("floor") or {})
    result = study_result(setup, first["protocol"], pretrained, floor, runs, started)
    write_results(result, setup.out, started)
    report(result, setup.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
