"""The ``study`` flow: a grid of pipeline arms as child flow runs and one comparison.

Arms = baseline + (group size x grouping mode x GroupDiff variant); every arm is evaluated at every cfg
scale of the sweep (the best guidance scale differs between baseline and GroupDiff). Each (arm, cfg) is a
child ``groupdiff-pipeline`` run without registration; training is keyed on its digest, which excludes
guidance, so the cfg sweep of an arm trains once and only samples and scores again. The comparison table
and plots (metric vs N, metric vs cfg, S_cross vs metric: ``groupdiff report``) go to the study's MLflow
run and to a Prefect markdown artifact. Arms run one after another (queued): with the training concurrency
limit of one per work pool, parallel arms would only wait for each other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from .params import PipelineParams, StudyParams
from .records import Records, RecordsConfig


def arms(params: StudyParams) -> list[dict[str, Any]]:
    """The grid: one dict of PipelineParams updates per arm (baseline first)."""
    out = [{"variants": ["baseline"]}]
    for n in params.group_sizes:
        for mode in params.grouping_modes:
            for variant in params.variants:
                if variant != "baseline":
                    out.append({"variants": [variant], "group_size": n, "grouping_mode": mode})
    return out


def plot_metric_vs_cfg(rows: list[dict], metric: str, path: Path) -> Path:
    """One line per arm: ``metric`` against the cfg scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in sorted({r["arm"] for r in rows}):
        pts = sorted((r["cfg_scale"], r["metrics"][metric]) for r in rows if r["arm"] == arm)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=arm)
    ax.set_xlabel("cfg scale")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@flow(name="study", log_prints=True)
def study(params: StudyParams = StudyParams(), records: RecordsConfig | None = None) -> dict[str, Any]:
    """Run every arm x cfg as a child pipeline run; return the comparison rows."""
    from groupdiff.report import build_report

    from .pipeline import pipeline

    records = (records or RecordsConfig.from_env()).resolved()
    rec = Records(records)
    grid = arms(params)
    child_params = []
    for update in grid:  # validate the whole grid before any work
        for cfg in params.cfg_scales:
            child_params.append(PipelineParams.model_validate(
                {**params.base.model_dump(), **update, "cfg_scale": cfg, "register_models": False}))
    for p in child_params:
        p.validate_configs()
    rows, metric = [], params.base.metric
    for p in child_params:
        result = pipeline.with_options(flow_run_name=f"study-{p.variants[0]}-N{p.group_size}-{p.grouping_mode}-cfg{p.cfg_scale:g}")(
            params=p, records=records)
        arm = p.variants[0] if p.variants == ["baseline"] else f"{p.variants[0]} N={p.group_size} {p.grouping_mode}"
        for row in result["rows"]:
            rows.append({"arm": arm, "cfg_scale": p.cfg_scale, "group_size": p.group_size, "metrics": row["metrics"],
                         "floor": row.get("floor") or {}, "score_json": row.get("score_json"),
                         "grouping_mode": p.grouping_mode, "seed": p.seed, "train_run_id": row.get("train_run_id"),
                         "checkpoint": row.get("checkpoint"), "class_grid": row.get("class_grid")})
    out = rec.work("study", Path(records.out).name)
    report = build_report([r["score_json"] for r in rows if r.get("score_json")], out / "report", "GroupDiff study")
    plot = plot_metric_vs_cfg(rows, metric, out / "report" / f"{metric}_vs_cfg.png")
    nan = float("nan")
    lines = [f"| arm | cfg | {metric} | {metric} real-data floor | class_agreement | floor class_agreement | s_cross |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["arm"], r["cfg_scale"])):
        m, f = r["metrics"], r["floor"]
        lines.append(f"| {r['arm']} | {r['cfg_scale']:g} | {m[metric]:.4g} | {f.get(metric, nan):.4g} | "
                     f"{m.get('class_agreement', nan):.3g} | {f.get('class_agreement', nan):.3g} | {m.get('s_cross', nan):.3g} |")
    best = min(rows, key=lambda r: r["metrics"][metric])
    table = "\n".join(lines)
    text = f"# GroupDiff study\n\n{table}\n\nBest: {best['arm']} at cfg {best['cfg_scale']:g} ({metric} {best['metrics'][metric]:.4g}).\n"
    from .common import stage_run

    with stage_run(rec, None, "study", {"arms": len(grid), "cfg_scales": params.cfg_scales}) as run_id:
        rec.mlflow.log_text(run_id, text, "study.md")
        for path in sorted((out / "report").glob("*")):
            if path.is_file():
                rec.mlflow.log_artifact(run_id, str(path), "report")
    create_markdown_artifact(text, key="study-comparison", description="metric per arm and cfg scale")
    return {"rows": rows, "table": table, "report": str(report), "plot": str(plot), "mlflow_run_id": run_id}
