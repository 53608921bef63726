"""``groupdiff run``: the pipeline flow on the embedded default (DESIGN 2.4 tier 1) and its summary.

No servers: Prefect's ephemeral API with its home in ``<out>/prefect`` (so a Prefect UI started with the
same home shows the runs), MLflow on ``<out>/mlflow.db``, the object store in ``<out>/store``, the catalogue
in ``<out>/catalogue.db``. The records locations of the environment (local stack) are deliberately
ignored: this command is the laptop path.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PIPELINE_PREFIX = "pipeline."


def split_overrides(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """``pipeline.FIELD=VALUE`` settings apart from preset overrides ``SECTION.FIELD=VALUE``."""
    import yaml

    settings, rest = {}, []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key.startswith(PIPELINE_PREFIX):
            settings[key[len(PIPELINE_PREFIX):]] = yaml.safe_load(value)
        else:
            rest.append(item)
    return settings, rest


def verdict(rows: list[dict], metric: str) -> str:
    """One plain sentence on which variant measured better, and what that does and does not mean."""
    by = {r["variant"]: r["metrics"][metric] for r in rows}
    if "baseline" not in by or len(by) < 2:
        return f"Measured {metric}: " + ", ".join(f"{k} {v:.4g}" for k, v in by.items()) + "."
    base = by["baseline"]
    others = {k: v for k, v in by.items() if k != "baseline"}
    best_name = min(others, key=others.get)
    best = others[best_name]
    if base <= best:
        head = (f"At this scale the BASELINE WON: {metric} {base:.4g} (baseline) vs {best:.4g} ({best_name}); "
                "GroupDiff did not help here.")
    else:
        head = f"At this scale {best_name} measured better: {metric} {best:.4g} vs {base:.4g} (baseline)."
    return (head + " These are tiny CPU runs (a few hundred steps, a few hundred samples): the numbers are "
            "noisy and say nothing about the paper's ImageNet results either way.")


def stage_times(flow_run_id: str) -> list[tuple[str, float]]:
    """(task run name, wall seconds) of every finished task of a flow run, in start order, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = [r for r in runs if r.start_time is not None and r.end_time is not None]
    return [(r.name, (r.end_time - r.start_time).total_seconds()) for r in sorted(runs, key=lambda r: r.start_time)]


def champion_line(champion: dict, metric: str) -> str:
    """The champion's class agreement and ``metric`` beside the real-data floor (and their ratio)."""
    m, floor = champion["metrics"], champion.get("floor") or {}
    parts = [f"Champion ({champion['variant']}): class_agreement {m.get('class_agreement', float('nan')):.3f}"]
    if "class_agreement" in floor:
        parts[-1] += f" (real data {floor['class_agreement']:.3f})"
    if metric in m:
        text = f"{metric} {m[metric]:.3g}"
        if floor.get(metric):
            text += f" vs real-data floor {floor[metric]:.3g} ({m[metric] / floor[metric]:.1f}x the floor)"
        parts.append(text)
    return ", ".join(parts) + "."


def copy_class_grids(rows: list[dict], out: Path) -> list[Path]:
    """Copy each variant's class grid (one row per class) to ``<out>/grids/<variant>.png``."""
    copied = []
    for row in rows:
        if row.get("class_grid") and Path(row["class_grid"]).is_file():
            target = out / "grids" / f"{row['variant']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(row["class_grid"]).read_bytes())
            copied.append(target)
    return copied


def summary(result: dict, params, out: Path, seconds: float, times: list[tuple[str, float]] | None = None,
            grids: list[Path] | None = None) -> str:
    """The text printed at the end of ``groupdiff run``."""
    records = result["records"]
    base = params.config(params.variants[0])  # the evaluation protocol as resolved (preset + settings)
    champion = next((r for r in result["rows"] if r.get("decision") == "promoted"), None)
    lines = [
        "", "=" * 78, f"GroupDiff pipeline finished in {seconds / 60:.1f} min (measured, this machine)", "=" * 78, "",
        f"Metrics as measured ({params.num_samples} samples per model, {params.steps()} training steps, "
        f"sampler {base.sampler.method} x {base.sampler.num_steps} steps, cfg {base.guidance.cfg_scale}, "
        f"{params.weights} weights; "
        "lower fd / higher is, precision, recall, class_agreement are better):",
        "", result["table"], "", result.get("floor_note", ""), "", verdict(result["rows"], result["metric"]), "",
    ]
    if champion:
        lines.append(f"Registered model '{params.model_name}' version {champion['version']} ({champion['variant']}) "
                     "now has the alias 'champion'.")
        lines.append(champion_line(champion, result["metric"]))
    else:
        lines.append(f"No version was promoted: none beat the existing champion of '{params.model_name}' beyond its "
                     f"{params.fd_interval:.0%} bootstrap interval of {result['metric']} under the same protocol.")
    if grids:
        classes = ("the dataset's classes in order" if params.dataset else "T-shirt, trouser, pullover, dress, coat, "
                   "sandal, shirt, sneaker, bag, ankle boot")
        lines += ["", f"Sample grids (one row per class: {classes}): " + ", ".join(str(g) for g in grids)]
    if times:
        lines += ["", "Wall time per stage (stages run side by side where they can):"]
        lines += [f"  {name:<40} {secs:7.1f} s" for name, secs in times]
    mlflow_uri = records["mlflow_uri"]
    lines += [
        "", "Where to look:",
        f"  artefacts (object store):   {records['store_root']}",
        f"  catalogue (SQLite):         {records['catalogue_url']}",
        f"  MLflow UI:                  .venv/bin/mlflow ui --backend-store-uri {mlflow_uri} "
        f"--default-artifact-root {(out / 'mlartifacts').as_uri()}",
        f"  Prefect UI with the runs:   PREFECT_HOME={out / 'prefect'} .venv/bin/prefect server start",
        f"  ... and the deployments:    PREFECT_HOME={out / 'prefect'} PREFECT_API_URL=http://127.0.0.1:4200/api "
        ".venv/bin/python -m flows.deployments serve",
        "  (the full platform with S3, PostgreSQL and a worker: `groupdiff up`, then "
        "`python -m flows.deployments deploy`; see README 'Running on the platform')", "",
    ]
    return "\n".join(lines)


def embedded_records(out: Path, training_slots: int = 1):
    """Set this process up for the embedded default under ``out`` (Prefect's ephemeral API with its home in
    ``<out>/prefect``, the environment's MLflow settings dropped) and return its RecordsConfig."""
    from .records import RecordsConfig

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(out / "prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):  # the embedded MLflow, not a server of the environment
        os.environ.pop(name, None)
    return RecordsConfig(out=str(out), use_env=False, training_slots=training_slots)


def run_embedded(preset: str, overrides: list[str], out: str | Path) -> int:
    """Run the pipeline flow with the embedded records under ``out`` and print the summary."""
    out = Path(out).resolve()
    settings, preset_overrides = split_overrides(overrides)
    from .params import PipelineParams

    params = PipelineParams(preset=preset, overrides=preset_overrides, **settings)
    if params.dataset:  # a version ingested with `groupdiff ingest --out OUT`: resolved in OUT's catalogue
        from .datasets import resolve_params
        from .records import RecordsConfig

        resolve_params(params, RecordsConfig(out=str(out), use_env=False)).validate_configs()
    else:
        params.validate_configs()  # bad settings fail before anything is written
    from .pipeline import pipeline

    # one training slot per core: the variants train side by side with params.threads threads each
    slots = max(1, min(len(params.variants), (os.cpu_count() or 1) // max(1, params.threads)))
    records = embedded_records(out, slots)
    started = time.perf_counter()
    result = pipeline(params=params, records=records)
    seconds = time.perf_counter() - started
    try:
        times = stage_times(result["flow_run_id"])
    except Exception as exc:  # the summary must not fail on a reporting detail
        print(f"(stage times unavailable: {exc})")
        times = None
    text = summary(result, params, out, seconds, times, copy_class_grids(result["rows"], out))
    print(text)
    (out / "summary.txt").write_text(text)
    sys.stdout.flush()
    return 0
