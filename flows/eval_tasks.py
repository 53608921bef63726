"""Evaluation tasks: sample a checkpoint, score the samples (``fd_fmnist`` etc.), register and promote.

Samples go to ``samples/<run>/<eval>/`` (``samples.npz``, ``grid.png``, ``classes.png``, ``sample.json``), scores to
``samples/<run>/<eval>/scores/<digest>/metrics.json``. The evaluation protocol id is a digest of what
makes two scores comparable (sampler, steps, seed, sample count, guidance scale, feature space and its
reference, the bootstrap of the fd interval), not of the variant nor of the checkpoint weights (EMA or
raw: two candidate models): promotion compares them under one protocol. Which weights were sampled is
recorded on every run (param and tag ``groupdiff.weights``) and registered version. Scores carry the
real-data floor (MLflow metrics ``floor.<name>``) and the classifier's test accuracy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from prefect import get_run_logger, task

from groupdiff.atomic import write_bytes_atomic, write_text_atomic
from groupdiff.config import GroupDiffConfig
from groupdiff.sample.stage import save_class_grid
from groupdiff.train.checkpoint import CheckpointDir

from .common import stage_digest, stage_run, task_options
from .data_tasks import MANIFEST, _metrics, already_published, fetch
from .records import Records, RecordsConfig


def inference_overrides(config: GroupDiffConfig) -> dict[str, dict]:
    """The ``sampler`` and ``guidance`` sections of ``config``, typed values as they are, replacing those of a
    checkpoint's stored config when sampling it (no text round trip)."""
    return {"sampler": config.sampler.model_dump(), "guidance": config.guidance.model_dump()}


def protocol_id(config: GroupDiffConfig, num_samples: int, classifier_digest: str, reference_limit: int,
                metric: str, fd_bootstrap: int, fd_interval: float) -> str:
    """Evaluation protocol: what must be equal for two scores (and their intervals) to be compared."""
    return "proto-" + stage_digest("protocol", sampler=config.sampler.model_dump(), num_samples=num_samples,
                                   cfg_scale=config.guidance.cfg_scale, classifier=classifier_digest,
                                   reference_limit=reference_limit, metric=metric, fd_bootstrap=fd_bootstrap,
                                   fd_interval=fd_interval)


WEIGHTS_TAG = "groupdiff.weights"
CLASS_GRID = "classes.png"  # one row per class: what a person looks at before believing the numbers
CLASS_GRID_PER_CLASS = 10


SAMPLE_FILES = ("samples.npz", "sample.json", "grid.png", CLASS_GRID)  # what a published sample set holds


@task(**task_options("sample"))
def sample_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, checkpoint: dict, num_samples: int,
                parent_run_id: str | None, threads: int, batch_images: int, weights: str) -> dict:
    """Generate ``num_samples`` class-balanced images from ``checkpoint``'s ``weights`` ('ema' or 'raw') with
    ``config``'s sampler/guidance; the weights are recorded (MLflow param and tag, sample.json, manifest)."""
    from groupdiff.sample.stage import scale_name
    from registry.layout import samples_key

    rec = Records(records)
    key = samples_key(checkpoint["run"], digest)
    prefix = key.rsplit("/", 1)[0]
    folder = rec.work("samples", checkpoint["run"], digest)
    if (done := already_published(rec, prefix)) is None:
        done = _sample_and_publish(rec, config, checkpoint, digest, prefix, folder, num_samples, parent_run_id,
                                   threads, batch_images, weights)
    else:
        for name in SAMPLE_FILES:
            if not (folder / name).is_file() and rec.store.exists(f"{prefix}/{name}"):
                rec.store.get_file(f"{prefix}/{name}", folder / name)
    grid_key = f"{prefix}/grid.png"
    # score the stage's own file when present: its sample.json gives the report its context (mode, N, cfg)
    staged = folder / "stage" / scale_name(done["cfg_scale"]) / "samples.npz"
    return {**done, "uri": rec.store.uri(key), "key": key, "path": str(staged if staged.is_file() else folder / "samples.npz"),
            "grid_key": grid_key if rec.store.exists(grid_key) else None,
            "class_grid": str(folder / CLASS_GRID) if (folder / CLASS_GRID).is_file() else None}


def _sample_and_publish(rec: Records, config: GroupDiffConfig, checkpoint: dict, digest: str, prefix: str,
                        folder: Path, num_samples: int, parent_run_id: str | None, threads: int, batch_images: int,
                        weights: str) -> dict:
    """Run the sample stage on the checkpoint (a nested MLflow run), keep its outputs in ``folder`` and
    publish them under ``prefix``; returns the published record."""
    import torch

    from groupdiff.sample.stage import SampleStageConfig, load_model_and_config
    from groupdiff.sample.stage import run as run_stage

    if threads:
        torch.set_num_threads(threads)
    model, cfg = load_model_and_config(str(local_checkpoint(rec, checkpoint)), overrides=inference_overrides(config),
                                       weights=weights)
    stage = SampleStageConfig(out_dir=str(folder / "stage"), num_samples=num_samples,
                              batch_groups=max(1, batch_images // cfg.guidance.group_size), grid_groups=4,
                              attention_score=cfg.guidance.group_size > 1, weights=weights)
    params = {"sampler": cfg.sampler.model_dump(), "guidance": cfg.guidance.model_dump(), "num_samples": num_samples,
              "weights": weights}
    with stage_run(rec, parent_run_id, f"sample-{checkpoint['variant']}", params) as run_id:
        rec.mlflow.set_tag(run_id, WEIGHTS_TAG, weights)
        result = run_stage(stage, cfg, model, progress=False)
        scale = stage.scales(cfg)[0]
        _keep_outputs(rec, run_id, result, scale, folder)
        done = {"digest": digest, "run": checkpoint["run"], "variant": checkpoint["variant"], "mlflow_run_id": run_id,
                "cfg_scale": scale, "num_samples": num_samples, "weights": weights}
        for name in SAMPLE_FILES:
            if (folder / name).is_file():
                rec.store.put_file(f"{prefix}/{name}", folder / name)
        publish_manifest(rec, prefix, folder, done)
    return done


def _keep_outputs(rec: Records, run_id: str, result, scale: float, folder: Path) -> None:
    """Copy the stage's samples, sample.json and grid for ``scale`` into ``folder``, draw the class grid, and
    log the grids and S_cross to the MLflow run."""
    from groupdiff.metrics.npz import read_samples_npz

    npz, grid = Path(result.npz[scale]), result.grids.get(scale)
    write_bytes_atomic(folder / "samples.npz", npz.read_bytes())
    write_bytes_atomic(folder / "sample.json", (folder / "stage" / "sample.json").read_bytes())
    if grid:
        write_bytes_atomic(folder / "grid.png", Path(grid).read_bytes())
        rec.mlflow.log_artifact(run_id, str(folder / "grid.png"), "samples")
    batch = read_samples_npz(npz)
    if save_class_grid(batch.images, batch.labels, CLASS_GRID_PER_CLASS, folder / CLASS_GRID) is not None:
        rec.mlflow.log_artifact(run_id, str(folder / CLASS_GRID), "samples")
    s_cross = result.s_cross.get(scale)
    if s_cross is not None and s_cross == s_cross:  # not NaN (N = 1 records none)
        rec.mlflow.log_batch(run_id, metrics=_metrics({"s_cross": s_cross}))


def local_checkpoint(rec: Records, checkpoint: dict) -> Path:
    """The checkpoint folder on this machine (downloaded from the store when the cache hit came from elsewhere)."""
    from registry.layout import checkpoint_prefix

    folder = Path(checkpoint["path"])
    if not CheckpointDir(folder).ema_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fetch(rec, checkpoint_prefix(checkpoint["run"], checkpoint["step"]), folder)
    return folder


def publish_manifest(rec: Records, prefix: str, folder: Path, manifest: dict) -> None:
    """Write the manifest object last (the files were uploaded one by one before)."""
    rec.store.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=2, default=str).encode())
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, default=str))


def floor_metrics(floor: dict[str, float]) -> dict[str, float]:
    """The real-data floor's metrics under MLflow names ``floor.<name>``."""
    return {f"floor.{k}": float(v) for k, v in floor.items() if v == v}


@task(**task_options("score"))
def score_task(records: RecordsConfig, digest: str, samples: dict, classifier: dict, reference_limit: int,
               parent_run_id: str | None, fd_bootstrap: int, fd_interval: float) -> dict:
    """Score the samples in the built-in feature space (``fd_fmnist`` with its bootstrap interval,
    ``is_fmnist``, precision, recall, ``class_agreement``, the classifier's test accuracy) beside the
    real-data floor (held-out test images after the reference, as many as samples)."""
    from groupdiff.metrics.score import ScoreConfig
    from groupdiff.metrics.score import run as run_score

    rec = Records(records)
    prefix = f"{samples['key'].rsplit('/', 1)[0]}/scores/{digest}"
    folder = rec.work("scores", digest)
    if (done := already_published(rec, prefix)) is None:
        weights = samples.get("weights")
        params = {"reference_limit": reference_limit, "fd_bootstrap": fd_bootstrap, "fd_interval": fd_interval,
                  "weights": weights}
        with stage_run(rec, parent_run_id, f"score-{samples['variant']}", params) as run_id:
            rec.mlflow.set_tag(run_id, WEIGHTS_TAG, str(weights))
            result = run_score(ScoreConfig(samples=samples["path"], out=str(folder / "metrics.json"), spaces=["fmnist"],
                                           classifier_weights=classifier["path"], fmnist_reference_limit=reference_limit,
                                           cache_dir=str(rec.work("reference-cache")), fd_bootstrap=fd_bootstrap,
                                           fd_interval=fd_interval))
            metrics = {k: float(v) for k, v in result["metrics"].items() if v == v}
            floor = {k: float(v) for k, v in result["floor"].items() if v == v}
            rec.mlflow.log_batch(run_id, metrics=_metrics({**metrics, **floor_metrics(floor)}))
            done = {"digest": digest, "metrics": metrics, "floor": floor, "floor_info": result.get("floor_info"),
                    "classifier": result.get("classifier"), "mlflow_run_id": run_id, "variant": samples["variant"],
                    "weights": weights}
            rec.store.put_file(f"{prefix}/metrics.json", folder / "metrics.json")
            publish_manifest(rec, prefix, folder, done)
    else:
        if not (folder / "metrics.json").is_file():
            rec.store.get_file(f"{prefix}/metrics.json", folder / "metrics.json")
    get_run_logger().info("%s: %s; real-data floor: %s", samples["variant"], done["metrics"], done.get("floor"))
    return {**done, "uri": rec.store.uri(f"{prefix}/metrics.json"), "path": str(folder / "metrics.json")}


def record_score(records: RecordsConfig, checkpoint: dict, samples: dict, score: dict, protocol: str,
                 metric: str) -> None:
    """Record a score as the catalogue evaluation of its checkpoint (``uri`` = the samples), registered or
    not, so that every sample set the pipeline writes is referenced; idempotent (the register task finds
    the same row)."""
    from sqlalchemy import select

    from registry.catalogue.models import Checkpoint
    from registry.catalogue.records import record_evaluation

    rec = Records(records)
    with rec.catalogue.begin() as session:
        ckpt = session.scalar(select(Checkpoint).where(Checkpoint.digest == checkpoint["digest"]))
        if ckpt is None:
            raise LookupError(f"checkpoint {checkpoint['digest']!r} ({checkpoint.get('uri')}) is not in the catalogue; "
                              "expected the train task to have recorded it")
        record_evaluation(session, ckpt, protocol, metric, score["metrics"][metric], score["digest"], samples["uri"],
                          {"metrics": score["metrics"]})


PROMOTION_PREFIX = "promote-"  # the Prefect global concurrency limit promote-<model> (1 slot) serialises promotions
PROMOTION_LEASE_S = 60.0


def promotion_limit(model_name: str) -> str:
    """The name of the concurrency limit that serialises promotions of ``model_name`` (characters Prefect refuses
    in a limit name replaced)."""
    return PROMOTION_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)


def promote_serialised(client, model_name: str, version: str, value: float, protocol: str, metric: str,
                       interval: tuple[float, float] | None):
    """:func:`registry.mlflow_registry.promote_if_better` holding the one slot of :func:`promotion_limit`: the
    gate reads the champion, decides and moves the aliases as one step, so two registrations at once (flow runs
    on any worker) cannot both see the same champion and leave the worse candidate holding the alias."""
    from prefect.concurrency.sync import concurrency

    from registry.mlflow_registry import promote_if_better

    from .training import _ensure_limit

    limit = promotion_limit(model_name)
    _ensure_limit(limit, 1)
    with concurrency(limit, occupy=1, lease_duration=PROMOTION_LEASE_S, strict=True):
        return promote_if_better(client, model_name, version, value, protocol, metric=metric, lower_is_better=True,
                                 interval=interval)


@task(**task_options("register"))
def register_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, checkpoint: dict, samples: dict,
                  score: dict, protocol: str, metric: str, model_name: str, parent_run_id: str | None) -> dict:
    """Log the checkpoint as an MLflow model version, promote it to ``champion`` only if it beats the
    current one under ``protocol`` (else it becomes ``challenger``), and record it in the catalogue."""
    import mlflow
    from sqlalchemy import select

    from groupdiff.sample.stage import load_model_and_config
    from registry.catalogue.models import Checkpoint
    from registry.catalogue.records import record_evaluation, record_model_version
    from registry.mlflow_model import log_groupdiff_model

    rec = Records(records)
    value = score["metrics"][metric]
    low, high = score["metrics"].get(f"{metric}_ci_low"), score["metrics"].get(f"{metric}_ci_high")
    interval = (low, high) if low is not None and high is not None else None
    weights = samples["weights"]
    with stage_run(rec, parent_run_id, f"register-{checkpoint['variant']}",
                   {"protocol": protocol, metric: value, "weights": weights}) as run_id:
        model, cfg = load_model_and_config(str(local_checkpoint(rec, checkpoint)), overrides=inference_overrides(config),
                                           weights=weights)
        mlflow.set_tracking_uri(rec.config.mlflow_uri)
        with mlflow.start_run(run_id=run_id):
            info = log_groupdiff_model(model, cfg.model, cfg.sampler, cfg.guidance, registered_model_name=model_name)
        version = str(info.registered_model_version)
        client = rec.mlflow
        client.set_model_version_tag(model_name, version, "groupdiff.checkpoint", checkpoint["uri"])
        client.set_model_version_tag(model_name, version, "groupdiff.checkpoint_run", checkpoint["run"])
        client.set_model_version_tag(model_name, version, "groupdiff.checkpoint_step", str(checkpoint["step"]))
        client.set_model_version_tag(model_name, version, "groupdiff.checkpoint_digest", checkpoint["digest"])
        client.set_model_version_tag(model_name, version, "groupdiff.variant", checkpoint["variant"])
        client.set_model_version_tag(model_name, version, "groupdiff.samples", samples["uri"])
        client.set_model_version_tag(model_name, version, WEIGHTS_TAG, weights)
        decision = promote_serialised(client, model_name, version, value, protocol, metric, interval)
        client.set_tag(run_id, WEIGHTS_TAG, weights)
        client.set_tag(run_id, "promotion.decision", decision.decision)
        client.set_tag(run_id, "promotion.reason", decision.reason)
        client.set_tag(run_id, "promotion.candidate_interval", repr(list(interval)) if interval else "")
        client.set_tag(run_id, "promotion.champion_interval",
                       repr(list(decision.champion_interval)) if decision.champion_interval else "")
    with rec.catalogue.begin() as session:
        ckpt = session.scalar(select(Checkpoint).where(Checkpoint.digest == checkpoint["digest"]))
        evaluation = record_evaluation(session, ckpt, protocol, metric, value, score["digest"], samples["uri"],
                                       {"metrics": score["metrics"]})
        record_model_version(session, model_name, int(version), checkpoint["uri"], ckpt, evaluation, run_id)
    return {"digest": digest, "version": version, "decision": decision.decision, "reason": decision.reason,
            "mlflow_run_id": run_id, "variant": checkpoint["variant"], "metric": metric, "value": value,
            "interval": list(interval) if interval else None,
            "champion_interval": list(decision.champion_interval) if decision.champion_interval else None}
