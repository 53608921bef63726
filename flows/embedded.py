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


def summary(result: dict, params, out: Path, seconds: float) -> str:
    """The text printed at the end of ``groupdiff run``."""
    records = result["records"]
    champion = next((r for r in result["rows"] if r.get("decision") == "promoted"), None)
    lines = [
        "", "=" * 78, f"GroupDiff pipeline finished in {seconds / 60:.1f} min (measured, this machine)", "=" * 78, "",
        f"Metrics as measured ({params.num_samples} samples per model, {params.train_steps} training steps, "
        f"sampler {params.sampler} x {params.sampling_steps} steps, cfg {params.cfg_scale}, {params.weights} weights; "
        "lower fd / higher is, precision, recall, class_agreement are better):",
        "", result["table"], "", result.get("floor_note", ""), "", verdict(result["rows"], result["metric"]), "",
    ]
    if champion:
        lines.append(f"Registered model '{params.model_name}' version {champion['version']} ({champion['variant']}) "
                     "now has the alias 'champion'.")
    else:
        lines.append(f"No version was promoted: none beat the existing champion of '{params.model_name}' beyond its "
                     f"{params.fd_interval:.0%} bootstrap interval of {result['metric']} under the same protocol.")
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


def run_embedded(preset: str, overrides: list[str], out: str | Path) -> int:
    """Run the pipeline flow with the embedded records under ``out`` and print the summary."""
    out = Path(out).resolve()
    settings, preset_overrides = split_overrides(overrides)
    from .params import PipelineParams

    params = PipelineParams(preset=preset, overrides=preset_overrides, **settings)
    params.validate_configs()  # bad settings fail before anything is written
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(out / "prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):  # the embedded MLflow, not a server of the environment
        os.environ.pop(name, None)
    from .pipeline import pipeline
    from .records import RecordsConfig

    records = RecordsConfig(out=str(out), use_env=False)
    started = time.perf_counter()
    result = pipeline(params=params, records=records)
    text = summary(result, params, out, time.perf_counter() - started)
    print(text)
    (out / "summary.txt").write_text(text)
    sys.stdout.flush()
    return 0
