"""Flows on registered models: ``retrain-nightly`` (resume from the champion with the latest data, evaluate
under the same protocol, promote only if better; with a dataset, on its newest version, and skipped, recorded,
when neither the data nor the code changed since the champion was trained) and ``evaluate-model`` (score one
registered version)."""
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


def newest_dataset(params: PipelineParams, records: RecordsConfig) -> tuple[PipelineParams, dict | None]:
    """``params`` pinned to the newest version of its dataset (whatever version it named) and that version
    (:func:`registry.datasets.describe`); without a dataset, ``params`` and None."""
    from registry.datasets import parse_spec

    from .datasets import find_version

    if not params.dataset:
        return params, None
    newest = find_version(records, parse_spec(params.dataset)[0])
    return PipelineParams.model_validate({**params.model_dump(), "dataset": newest["spec"]}), newest


RESUMED_FROM_TAG = "groupdiff.resumed_from"  # on a version retrain-nightly trained from the champion: its version


def unchanged_since(rec: Records, model_name: str, champion, newest: dict) -> str | None:
    """Why retraining the champion would change nothing (None when the data or the code changed): it was trained
    on the newest version's content with this code version, or it was already retrained on them (a version
    resumed from it carries both; rejected, it is the challenger). Read from the registration tags."""
    from .datasets import CODE_VERSION_TAG, DATASET_DIGEST_TAG, code_version

    code = code_version()

    def same(version) -> bool:
        return version.tags.get(DATASET_DIGEST_TAG) == newest["digest"] and version.tags.get(CODE_VERSION_TAG) == code

    what = f"{newest['spec']} (digest {newest['digest']}) with code {code}"
    if same(champion):
        return f"champion v{champion.version} was trained on {what}: neither the data nor the code changed"
    tried = [v for v in rec.mlflow.search_model_versions(f"name='{model_name}'")
             if v.tags.get(RESUMED_FROM_TAG) == str(champion.version) and same(v)]
    if tried:
        return (f"champion v{champion.version} was already retrained on {what} (v{tried[0].version}, "
                f"{tried[0].tags.get('promotion.decision', 'not registered')}): neither the data nor the code changed")
    return None


def record_skip(rec: Records, params: PipelineParams, champion, newest: dict, reason: str) -> dict[str, Any]:
    """A skipped retraining, recorded: an MLflow run (tags ``retrain.decision`` = skipped, ``retrain.reason``), a
    log line and a Prefect artifact; returns the flow's result."""
    from .common import stage_run

    tags = {"retrain.decision": "skipped", "retrain.reason": reason, "retrain.dataset": newest["spec"],
            "retrain.champion_version": str(champion.version)}
    with stage_run(rec, None, "retrain-nightly-skipped", tags=tags) as run_id:
        pass
    get_run_logger().info("retrain-nightly skipped: %s (MLflow run %s)", reason, run_id)
    create_markdown_artifact(f"# retrain-nightly skipped\n\n{reason}.\n", key="retrain-nightly")
    return {"skipped": True, "reason": reason, "dataset": newest, "previous_champion": str(champion.version),
            "mlflow_run_id": run_id}


@flow(name="retrain-nightly", log_prints=True)
def retrain_nightly(params: PipelineParams = PipelineParams(), records: RecordsConfig | None = None) -> dict[str, Any]:
    """Fine-tune the current champion on the latest data (its variant, ``params.train_steps`` more steps),
    evaluate it under the pipeline's protocol and promote it only if it beats the champion. With no
    champion yet this is the plain pipeline. With ``params.dataset`` the data is the newest version of that
    dataset, and the run is skipped (recorded) when neither it nor the code changed since the champion."""
    from .datasets import resolve_params
    from .pipeline import pipeline

    records = (records or RecordsConfig.from_env()).resolved()
    rec = Records(records)
    params, newest = newest_dataset(params, records)
    resolve_params(params, records).validate_configs()
    from registry.mlflow_registry import CHAMPION, version_by_alias

    try:
        champion = version_by_alias(rec.mlflow, params.model_name, CHAMPION)
    except Exception:  # no registered model yet
        champion = None
    if champion is None:
        get_run_logger().info("no champion of %r yet: running the pipeline from scratch", params.model_name)
        return pipeline(params=params, records=records)
    if newest is not None and (reason := unchanged_since(rec, params.model_name, champion, newest)):
        return record_skip(rec, params, champion, newest, reason)
    folder, tags = fetch_version_checkpoint(rec, champion)
    variant = tags.get("groupdiff.variant", "baseline")
    resumed = PipelineParams.model_validate({**params.model_dump(), "variants": [variant],
                                             "init_from": f"pretrained:{CheckpointDir(folder).ema_file}"})
    get_run_logger().info("resuming champion v%s (%s) from %s%s", champion.version, variant, folder,
                          f" on {newest['spec']}" if newest else "")
    result = pipeline(params=resumed, records=records)
    result["previous_champion"] = str(champion.version)
    for row in result["rows"]:
        if row.get("version"):
            rec.mlflow.set_model_version_tag(params.model_name, row["version"], RESUMED_FROM_TAG, str(champion.version))
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
