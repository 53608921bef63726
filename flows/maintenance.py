"""Flows on registered models: ``retrain-nightly`` (resume from the champion with the latest data, evaluate
under the same protocol, promote only if better) and ``evaluate-model`` (score one registered version)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from groupdiff.train.checkpoint import CheckpointDir

from .params import EvaluateParams, PipelineParams
from .records import Records, RecordsConfig


def resolve_version(rec: Records, name: str, version: str):
    """A model version by number or alias (error naming the model and the value when missing)."""
    from registry.mlflow_registry import require_registered_model, version_by_alias

    require_registered_model(rec.mlflow, name)
    if version.isdigit():
        return rec.mlflow.get_model_version(name, version)
    found = version_by_alias(rec.mlflow, name, version)
    if found is None:
        raise KeyError(f"registered model {name!r} has no version with alias {version!r}")
    return found


def fetch_version_checkpoint(rec: Records, mv) -> tuple[Path, dict[str, str]]:
    """Download the checkpoint a registered version was logged from; returns its folder and its tags."""
    from registry.layout import checkpoint_prefix

    from .data_tasks import fetch

    tags = mv.tags
    missing = [t for t in ("groupdiff.checkpoint_run", "groupdiff.checkpoint_step", "groupdiff.checkpoint_digest")
               if t not in tags]
    if missing:
        raise KeyError(f"model version {mv.name} v{mv.version} lacks tags {missing}: it was not registered by the pipeline")
    run, step = tags["groupdiff.checkpoint_run"], int(tags["groupdiff.checkpoint_step"])
    folder = rec.work("checkpoints", run, f"{step:08d}")
    if not CheckpointDir(folder).ema_file.is_file():
        fetch(rec, checkpoint_prefix(run, step), folder)
    return folder, dict(tags)


@flow(name="retrain-nightly", log_prints=True)
def retrain_nightly(params: PipelineParams = PipelineParams(), records: RecordsConfig | None = None) -> dict[str, Any]:
    """Fine-tune the current champion on the latest data (its variant, ``params.train_steps`` more steps),
    evaluate it under the pipeline's protocol and promote it only if it beats the champion. With no
    champion yet this is the plain pipeline."""
    from .pipeline import pipeline

    records = (records or RecordsConfig.from_env()).resolved()
    rec = Records(records)
    params.validate_configs()
    from registry.mlflow_registry import CHAMPION, version_by_alias

    try:
        champion = version_by_alias(rec.mlflow, params.model_name, CHAMPION)
    except Exception:  # no registered model yet
        champion = None
    if champion is None:
        get_run_logger().info("no champion of %r yet: running the pipeline from scratch", params.model_name)
        return pipeline(params=params, records=records)
    folder, tags = fetch_version_checkpoint(rec, champion)
    variant = tags.get("groupdiff.variant", "baseline")
    resumed = PipelineParams.model_validate({**params.model_dump(), "variants": [variant],
                                             "init_from": f"pretrained:{CheckpointDir(folder).ema_file}"})
    get_run_logger().info("resuming champion v%s (%s) from %s", champion.version, variant, folder)
    result = pipeline(params=resumed, records=records)
    result["previous_champion"] = str(champion.version)
    _record_parent(rec, [r["checkpoint"] for r in result["rows"]], tags["groupdiff.checkpoint_digest"])
    return result


def _record_parent(rec: Records, checkpoint_uris: list[str], parent_digest: str) -> None:
    """Catalogue lineage: the fine-tuned checkpoints started from the champion's checkpoint."""
    from sqlalchemy import select

    from registry.catalogue.models import Checkpoint

    with rec.catalogue.begin() as session:
        parent = session.scalar(select(Checkpoint).where(Checkpoint.digest == parent_digest))
        for uri in checkpoint_uris:
            child = session.scalar(select(Checkpoint).where(Checkpoint.uri == uri))
            if child is not None and parent is not None and child.id != parent.id:
                child.parent = parent


@flow(name="evaluate-model", log_prints=True)
def evaluate_model(params: EvaluateParams = EvaluateParams(), records: RecordsConfig | None = None) -> dict[str, Any]:
    """Sample and score a registered version (number or alias) under the pipeline's evaluation protocol;
    the scores are logged to MLflow, tagged on the version and shown as a Prefect artifact."""
    from groupdiff.config import GroupDiffConfig, apply_overrides

    from .common import stage_run
    from .data_tasks import _metrics, classifier_task, data_digests
    from .eval_tasks import WEIGHTS_TAG, floor_metrics, protocol_id, sample_task, score_task
    from .pipeline import floor_note, sample_digest, score_digest

    records = (records or RecordsConfig.from_env()).resolved()
    rec = Records(records)
    mv = resolve_version(rec, params.model_name, params.version)
    folder, tags = fetch_version_checkpoint(rec, mv)
    stored = CheckpointDir(folder).read_config()
    weights = params.weights or tags.get(WEIGHTS_TAG) or "ema"
    config = GroupDiffConfig.model_validate(apply_overrides(stored, {
        **params.protocol_overrides(), "sampler.seed": params.seed, **params.classifier_overrides()}))
    groups = 10 * config.guidance.group_size
    if params.num_samples % groups:
        raise ValueError(f"num_samples={params.num_samples} must be a multiple of 10 x group size "
                         f"{config.guidance.group_size} = {groups}")
    with stage_run(rec, None, f"evaluate-{params.model_name}-v{mv.version}", {**params.model_dump(), "weights": weights}) as run_id:
        rec.mlflow.set_tag(run_id, WEIGHTS_TAG, weights)
        clf_digest = data_digests(config, "unused")["classifier"]
        classifier = classifier_task(config, records, clf_digest, run_id)
        checkpoint = {"run": tags["groupdiff.checkpoint_run"], "step": int(tags["groupdiff.checkpoint_step"]),
                      "digest": tags["groupdiff.checkpoint_digest"], "variant": tags.get("groupdiff.variant", ""),
                      "path": str(folder), "uri": tags.get("groupdiff.checkpoint", "")}
        sdig = sample_digest(config, checkpoint["digest"], params.num_samples, params.sample_batch_images, weights)
        samples = sample_task(config, records, sdig, checkpoint, params.num_samples, run_id, 0,
                              params.sample_batch_images, weights)
        score = score_task(records, score_digest(sdig, clf_digest, params), samples, classifier, params.reference_limit,
                           run_id, params.fd_bootstrap, params.fd_interval)
        protocol = protocol_id(config, params.num_samples, clf_digest, params.reference_limit, "fd_fmnist",
                               params.fd_bootstrap, params.fd_interval)
        floor = score.get("floor") or {}
        rec.mlflow.log_batch(run_id, metrics=_metrics({**score["metrics"], **floor_metrics(floor)}))
        for key, value in {**score["metrics"], **floor_metrics(floor)}.items():
            rec.mlflow.set_model_version_tag(params.model_name, mv.version, f"evaluate.{protocol}.{key}", repr(value))
        rec.mlflow.set_model_version_tag(params.model_name, mv.version, f"evaluate.{protocol}.weights", weights)
    rows = "\n".join(f"| {k} | {v:.4g} | {floor[k]:.4g} |" if k in floor else f"| {k} | {v:.4g} | |"
                     for k, v in score["metrics"].items())
    note = floor_note([{"score": score}], params)
    create_markdown_artifact(f"# {params.model_name} v{mv.version} ({checkpoint['variant']}, {weights} weights)\n\n"
                             f"Protocol `{protocol}`\n\n{note}\n\n"
                             f"| metric | model | real-data floor |\n|---|---|---|\n{rows}\n", key="evaluate-model")
    return {"version": str(mv.version), "protocol": protocol, "metrics": score["metrics"], "floor": floor,
            "weights": weights, "samples": samples["uri"]}
