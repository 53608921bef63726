"""The ``groupdiff-pipeline`` flow: dataset -> classifier -> embed -> mine -> train (each variant) -> sample
-> score -> register the better one as ``champion`` (DESIGN 2.2).

Every stage task is keyed on its content digest (config + input digests, :func:`stage_digests`), so an
unchanged step is a Prefect cache hit across flow runs and its object is already in the store. The
parameters are validated into full configs before any task runs; registration happens only after every
evaluation has finished, so a failing stage leaves the registry and its aliases untouched. The flow's
MLflow run is the parent of each stage's run; the training subprocess logs to its stage run.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from groupdiff.config import GroupDiffConfig

from .common import end_failed_run, log_params, stage_digest
from .data_space import data_classifier_task, data_score_task
from .data_tasks import classifier_task, data_digests, dataset_task, embed_task, mine_task
from .datasets import DATASET_TAG, resolve_params, tag_model_version
from .eval_tasks import protocol_id, record_score, register_task, sample_task, score_task
from .params import PipelineParams
from .records import Records, RecordsConfig
from .training import kill_recorded, train_task

TRAIN_EXCLUDE = {"groups_path", "num_threads", "log_every", "record_indices", "resume", "init_from"}


def kill_training_hook(flow, flow_run, state) -> None:
    """on_cancellation / on_crashed: kill the training process groups this flow run started."""
    records = flow_run.parameters.get("records") or {}
    if isinstance(records, RecordsConfig):
        records = records.model_dump()
    out = RecordsConfig.from_env(**{k: v for k, v in records.items() if k != "out"},
                                 out=records.get("out")).resolved().out
    killed = kill_recorded(out, str(flow_run.id))
    if killed:
        print(f"flow run {flow_run.id} {state.name}: killed training process groups {killed}")


def train_digest(config: GroupDiffConfig, dataset: str, groups: str | None) -> str:
    """Content digest of a training run: model, transport, train config, data and groups (+ init weights)."""
    from groupdiff.data.digest import file_digest

    init = config.train.init_from
    init_digest = file_digest(config.train.pretrained_path) if config.train.pretrained_path else init
    return stage_digest("train", dataset=dataset, groups=groups if config.train.variant != "baseline" else None,
                        model=config.model.model_dump(), transport=config.transport.model_dump(),
                        train=config.train.model_dump(exclude=TRAIN_EXCLUDE), init=init_digest)


def sample_digest(config: GroupDiffConfig, checkpoint: str, num_samples: int, batch_images: int, weights: str) -> str:
    """Content digest of an evaluation's samples: the checkpoint and which of its weights, sampler, guidance,
    count and batch layout (the batch fixes the noise layout, so it changes the images)."""
    return stage_digest("sample", checkpoint=checkpoint, sampler=config.sampler.model_dump(),
                        guidance=config.guidance.model_dump(), num_samples=num_samples, batch_images=batch_images,
                        weights=weights)


def score_digest(samples: str, classifier: str, params) -> str:
    """Content digest of a score: the samples, the classifier, the reference and the fd bootstrap."""
    return stage_digest("score", samples=samples, classifier=classifier, reference=params.reference_limit,
                        fd_bootstrap=params.fd_bootstrap, fd_interval=params.fd_interval)


def _mlflow_link(rec: Records, run_id: str) -> str:
    uri = rec.config.mlflow_uri
    if uri.startswith("http"):
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{rec.experiment_id()}/runs/{run_id})"
    return f"`{run_id}` (`mlflow ui --backend-store-uri {uri}`)"


def metrics_table(rows: list[dict], metric: str) -> str:
    """Markdown table of the evaluations (one row per variant, best ``metric`` first), then the real-data
    floor (held-out real images, as many as samples, scored the same way) of the first row that has one."""
    keys = sorted({k for r in rows for k in r["metrics"]})
    lines = ["| variant | weights | " + " | ".join(keys) + " | model version | decision |",
             "|---|---|" + "---|" * (len(keys) + 2)]
    for r in sorted(rows, key=lambda r: r["metrics"].get(metric, float("inf"))):
        values = " | ".join(f"{r['metrics'][k]:.4g}" if k in r["metrics"] else "" for k in keys)
        lines.append(f"| {r['variant']} | {r.get('weights', '')} | {values} | {r.get('version', '')} | {r.get('decision', '')} |")
    floor = next((r["floor"] for r in rows if r.get("floor")), None)
    if floor:
        values = " | ".join(f"{floor[k]:.4g}" if k in floor else "" for k in keys)
        lines.append(f"| real-data floor | real | {values} | | |")
    return "\n".join(lines)


def _report(rec: Records, params: PipelineParams, rows: list[dict], parent_run_id: str, protocol: str) -> str:
    lines = [f"# GroupDiff pipeline ({params.preset})", "", f"Evaluation protocol `{protocol}`, metric "
             f"`{params.metric}` (lower is better), {params.num_samples} samples from the `{params.weights}` weights, "
             f"{params.steps()} training steps; promotion needs {params.metric} beyond the champion's "
             f"{params.fd_interval:.0%} bootstrap interval ({params.fd_bootstrap} resamples).",
             "", floor_note(rows, params),
             "", metrics_table(rows, params.metric), "", f"MLflow pipeline run: {_mlflow_link(rec, parent_run_id)}", ""]
    for r in rows:
        link = rec.store.presigned_url(r["grid_key"]) if r.get("grid_key") else "(no grid)"
        lines.append(f"- {r['variant']}: MLflow run {_mlflow_link(rec, r['train_run_id'])}, sample grid [{r['variant']}]({link})")
    return "\n".join(lines)


def floor_note(rows: list[dict], params) -> str:
    """One line: where the real-data floor's images came from, and the classifier's test accuracy."""
    info = next((r["score"].get("floor_info") for r in rows if r["score"].get("floor_info")), None)
    clf = next((r["score"].get("classifier") for r in rows if r["score"].get("classifier")), None) or {}
    parts = []
    own = (info or clf).get("space") == "data"
    if info and own:
        parts.append(f"Real-data floor: {info['num_images']} held-out images of {params.dataset} (of "
                     f"{info['dataset_images']}), disjoint from the {info['reference_images']} reference images and "
                     "from the classifier's training images, scored like the samples.")
    elif info:
        parts.append(f"Real-data floor: {info['num_images']} held-out Fashion-MNIST test images "
                     f"(indices {info['first_index']}..{info['last_index']}), disjoint from the "
                     f"{info['reference_images']} reference images, scored like the samples.")
    if clf.get("test_accuracy") is not None:
        parts.append(f"The {'fd_data' if own else 'fd_fmnist'} classifier's test accuracy: {clf['test_accuracy']:.4f} "
                     f"on {int(clf.get('eval_images') or 0) or '?'} {'held-out' if own else 'test'} images.")
    return " ".join(parts)


class StageProgress:
    """The pipeline's progress artifact in the Prefect UI: the share of its stages finished."""

    def __init__(self, params: PipelineParams, variants: int):
        self.total = 3 + 3 * variants + (variants if params.register_models else 0)  # data stages + per variant
        self.done = 0
        self.artifact = create_progress_artifact(0.0, key="pipeline-progress", description="stages finished")

    def advance(self, count: int = 1) -> None:
        self.done += count
        update_progress_artifact(self.artifact, 100.0 * self.done / self.total)


def _data_stages(params: PipelineParams, base: GroupDiffConfig, records: RecordsConfig, parent_id: str):
    """Dataset, then embedding and mining (only when a GroupDiff variant needs groups); the classifier is
    submitted first and trains beside them (it is needed only for scoring and by the classifier encoder).
    Returns the dataset, the stage digests, the classifier's future and the group table (or None)."""
    dataset = dataset_task(base, records)
    own_space = base.data.dataset != "fmnist"  # scored in the data space (flows.data_space), not fd_fmnist
    held_out = (params.reference_limit, params.num_samples) if own_space else None
    digests = data_digests(base, dataset["digest"], held_out)
    if own_space:  # its classifier leaves out the reference and floor images
        classifier = data_classifier_task.submit(base, records, digests["classifier"], parent_id, *held_out)
    else:
        classifier = classifier_task.submit(base, records, digests["classifier"], parent_id)
    groups = None
    if any(v != "baseline" for v in params.variants):
        embeddings = embed_task(base, records, digests["embed"], dataset, parent_id,
                                classifier.result() if base.embed.encoder == "classifier" else None)
        groups = mine_task(base, records, digests["mine"], embeddings, parent_id)
    return dataset, digests, classifier, groups


def _submit_chains(params: PipelineParams, configs: dict[str, GroupDiffConfig], records: RecordsConfig,
                   dataset: dict, groups: dict | None, classifier, digests: dict, parent_id: str) -> list[tuple]:
    """Submit each variant's train -> sample -> score chain at once: the chains run side by side (threads
    of this flow; training is a subprocess), as far as the pool's training slots allow
    (``records.training_slots``), so one variant samples while another still trains."""
    chains = []
    scorer = data_score_task if params.dataset else score_task
    for variant, config in configs.items():
        tdig = train_digest(config, dataset["digest"], groups["digest"] if groups else None)
        checkpoint_f = train_task.with_options(task_run_name=f"train-{variant}").submit(
            config, records, tdig, dataset, groups if variant != "baseline" else None, parent_id, params.world_size)
        sdig = sample_digest(config, tdig, params.num_samples, params.sample_batch_images, params.weights)
        samples_f = sample_task.with_options(task_run_name=f"sample-{variant}").submit(
            config, records, sdig, checkpoint_f, params.num_samples, parent_id, params.threads,
            params.sample_batch_images, params.weights)
        cdig = score_digest(sdig, digests["classifier"], params)
        score_f = scorer.with_options(task_run_name=f"score-{variant}").submit(
            records, cdig, samples_f, classifier, params.reference_limit, parent_id, params.fd_bootstrap,
            params.fd_interval)
        chains.append((variant, config, checkpoint_f, samples_f, score_f))
    return chains


def _collect_rows(params: PipelineParams, records: RecordsConfig, chains: list[tuple], protocol: str,
                  progress: StageProgress) -> list[dict]:
    """Wait for every chain, record its score in the catalogue and return one row per variant."""
    rows = []
    for variant, config, checkpoint_f, samples_f, score_f in chains:
        checkpoint, samples, score = checkpoint_f.result(), samples_f.result(), score_f.result()
        record_score(records, checkpoint, samples, score, protocol, params.metric)
        progress.advance(3)
        rows.append({"variant": variant, "config": config, "checkpoint": checkpoint, "samples": samples,
                     "score": score, "metrics": score["metrics"], "floor": score.get("floor"),
                     "weights": params.weights, "grid_key": samples.get("grid_key"),
                     "train_run_id": checkpoint["mlflow_run_id"]})
    return rows


def _register(params: PipelineParams, rec: Records, records: RecordsConfig, rows: list[dict], protocol: str,
              parent_id: str, progress: StageProgress, dataset: dict) -> None:
    """Register every row, best first, each through the promotion gate (called only after every evaluation
    succeeded: a failing stage leaves the registry untouched), tagged with its dataset and code version."""
    for row in sorted(rows, key=lambda r: r["metrics"][params.metric]):
        rdig = stage_digest("register", score=row["score"]["digest"], checkpoint=row["checkpoint"]["digest"],
                            model=params.model_name, mlflow=rec.config.mlflow_uri, protocol=protocol)
        reg = register_task(row["config"], records, rdig, row["checkpoint"], row["samples"], row["score"],
                            protocol, params.metric, params.model_name, parent_id)
        row.update(version=reg["version"], decision=reg["decision"], reason=reg["reason"])
        tag_model_version(rec, params.model_name, reg["version"], dataset)
        progress.advance()


def rescore_champion(params: PipelineParams, rec: Records, records: RecordsConfig, classifier: dict, digests: dict,
                     protocol: str, parent_id: str) -> dict | None:
    """On a dataset version, the champion trained on an earlier version of the same dataset is sampled and scored
    under this run's protocol (the data space changes with the version) and its evaluation tags are rewritten by
    the gate (it stays champion), so this run's candidates are compared with it instead of being 'incomparable'.
    Returns the champion's new score, or None when there is nothing to re-score."""
    from registry.mlflow_registry import CHAMPION, version_by_alias

    from .eval_tasks import promote_serialised

    if not (params.dataset and params.register_models):
        return None
    try:
        champion = version_by_alias(rec.mlflow, params.model_name, CHAMPION)
    except Exception:  # no registered model yet
        return None
    name = params.dataset.split("@")[0]
    if champion is None or champion.tags.get("eval.protocol_id") == protocol \
            or champion.tags.get(DATASET_TAG, "").split("@")[0] != name:
        return None
    tags, variant = champion.tags, champion.tags.get("groupdiff.variant", "baseline")
    run, step = tags["groupdiff.checkpoint_run"], int(tags["groupdiff.checkpoint_step"])
    checkpoint = {"run": run, "step": step, "digest": tags["groupdiff.checkpoint_digest"], "variant": variant,
                  "path": str(rec.work("checkpoints", run, f"{step:08d}")), "uri": tags.get("groupdiff.checkpoint", "")}
    config = params.config(variant)
    sdig = sample_digest(config, checkpoint["digest"], params.num_samples, params.sample_batch_images, params.weights)
    samples = sample_task.with_options(task_run_name="sample-champion")(
        config, records, sdig, checkpoint, params.num_samples, parent_id, params.threads, params.sample_batch_images,
        params.weights)
    score = data_score_task.with_options(task_run_name="score-champion")(
        records, score_digest(sdig, digests["classifier"], params), samples, classifier, params.reference_limit,
        parent_id, params.fd_bootstrap, params.fd_interval)
    record_score(records, checkpoint, samples, score, protocol, params.metric)
    metrics = score["metrics"]
    low, high = metrics.get(f"{params.metric}_ci_low"), metrics.get(f"{params.metric}_ci_high")
    promote_serialised(rec.mlflow, params.model_name, str(champion.version), metrics[params.metric], protocol,
                       params.metric, (low, high) if low is not None and high is not None else None)
    rec.mlflow.set_model_version_tag(params.model_name, champion.version, "eval.rescored_on", params.dataset)
    get_run_logger().info("champion v%s re-scored on %s: %s %.4g", champion.version, params.dataset, params.metric,
                          metrics[params.metric])
    return {"version": str(champion.version), "metrics": metrics}


def _publish_summary(rec: Records, params: PipelineParams, rows: list[dict], parent_id: str, protocol: str) -> None:
    """The summary as a Prefect markdown artifact and an MLflow text, and the metrics and floor on the parent run."""
    report = _report(rec, params, rows, parent_id, protocol)
    create_markdown_artifact(report, key="pipeline-summary", description="Metrics, MLflow runs and sample grids")
    rec.mlflow.log_text(parent_id, report, "summary.md")
    for row in rows:
        rec.mlflow.log_metric(parent_id, f"{row['variant']}.{params.metric}", row["metrics"][params.metric])
    floor = next((r["floor"] for r in rows if r.get("floor")), {})
    for key, value in floor.items():
        rec.mlflow.log_metric(parent_id, f"floor.{key}", value)
    rec.mlflow.set_tag(parent_id, "groupdiff.weights", params.weights)


def _result(params: PipelineParams, records: RecordsConfig, rows: list[dict], protocol: str, parent_id: str,
            flow_run_id: str) -> dict[str, Any]:
    """The flow's return value: JSON-able rows and where the records are."""
    out_rows = [{k: r[k] for k in ("variant", "metrics", "floor", "weights", "train_run_id")} | {
        "version": r.get("version"), "decision": r.get("decision"), "reason": r.get("reason"),
        "checkpoint": r["checkpoint"]["uri"],
        "samples": r["samples"]["uri"], "grid_key": r.get("grid_key"), "class_grid": r["samples"].get("class_grid"),
        "score_json": r["score"]["path"]} for r in rows]
    return {"rows": out_rows, "protocol": protocol, "mlflow_run_id": parent_id, "records": records.model_dump(),
            "flow_run_id": flow_run_id, "metric": params.metric, "table": metrics_table(rows, params.metric),
            "floor_note": floor_note(rows, params)}


@flow(name="groupdiff-pipeline", on_cancellation=[kill_training_hook], on_crashed=[kill_training_hook],
      log_prints=True)
def pipeline(params: PipelineParams = PipelineParams(), records: RecordsConfig | None = None) -> dict[str, Any]:
    """Run the whole pipeline for ``params``; returns the metrics rows, registrations and record locations."""
    from prefect.runtime import flow_run

    log = get_run_logger()
    records = (records or RecordsConfig.from_env()).resolved()
    params = resolve_params(params, records)  # a dataset version: pinned ('name@N') and its config settings
    configs = params.validate_configs()  # every error before any work
    if params.threads:  # this flow's process runs the classifier, embedding, sampling and scoring
        import torch

        torch.set_num_threads(params.threads)
    rec = Records(records)
    parent_id = rec.mlflow.create_run(rec.experiment_id(), run_name="pipeline", tags={
        "groupdiff.stage": "pipeline", "prefect.flow_run_id": str(flow_run.get_id())}).info.run_id
    log_params(rec, parent_id, params.model_dump(context={"resolved": True}))
    progress = StageProgress(params, len(configs))
    try:
        base = configs[params.variants[0]]
        dataset, digests, classifier, groups = _data_stages(params, base, records, parent_id)
        progress.advance(2)
        protocol = protocol_id(base, params.num_samples, digests["classifier"], params.reference_limit, params.metric,
                               params.fd_bootstrap, params.fd_interval)
        chains = _submit_chains(params, configs, records, dataset, groups, classifier, digests, parent_id)
        classifier.result()
        progress.advance()
        rows = _collect_rows(params, records, chains, protocol, progress)
        rescored = rescore_champion(params, rec, records, classifier.result(), digests, protocol, parent_id)
        if params.register_models:
            _register(params, rec, records, rows, protocol, parent_id, progress, dataset)
        _publish_summary(rec, params, rows, parent_id, protocol)
    except BaseException:
        end_failed_run(rec.mlflow, parent_id)
        raise
    rec.mlflow.set_terminated(parent_id, "FINISHED")
    log.info("\n%s", metrics_table(rows, params.metric))
    return {**_result(params, records, rows, protocol, parent_id, str(flow_run.get_id())),
            "dataset": dataset, "champion_rescored": rescored}
