"""The train task: training runs as a subprocess in its own process group, killed with its flow run.

The subprocess is the library's one launch (:func:`groupdiff.train.launch.start`): ``python -m
groupdiff.train_worker`` for one rank, under ``torch.distributed.run`` for more (world size from the
parameters), with ``$GROUPDIFF_TRACKER`` naming :func:`registry.mlflow_tracker.run_tracker` so rank 0 also
logs to the MLflow run of the task. It runs in a session of its own and its group id is written to
``<out>/pids/<flow run>/<pgid>``. The group and every rank below it are stopped (SIGTERM, then SIGKILL;
:func:`groupdiff.procs.stop_tree`) when the task ends abnormally (Prefect raises in the flow process on
cancellation), by the flow's ``on_cancellation`` / ``on_crashed`` hooks (which read those pid files:
the hooks may run in another process, e.g. the runner), and by the worker's own parent watchdog if the
flow process is killed outright. At most one training run per work pool holds the Prefect global
concurrency limit ``training-<pool>``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from prefect import get_run_logger, task

from groupdiff.config import GroupDiffConfig
from groupdiff.procs import PARENT_PID_ENV, stop_tree
from groupdiff.train.checkpoint import CheckpointDir, find_latest
from groupdiff.train.launch import start, supervise, write_launch_config
from groupdiff.train.tracker import METRICS_FILE, TRACKER_ENV

from .common import console_echo, stage_run, task_options
from .records import Records, RecordsConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.5
TRACKER = "registry.mlflow_tracker:run_tracker"  # rank 0 of a launched training logs to the task's MLflow run
KILL_GRACE_S = 10.0
CONCURRENCY_PREFIX = "training-"
LEASE_S = 60.0  # the slot's lease, renewed while training runs: a killed flow frees the slot within a minute


def pid_folder(out: str | Path, flow_run_id: str) -> Path:
    """Where the process-group ids of a flow run's training subprocesses are recorded."""
    return Path(out) / "pids" / flow_run_id


def kill_recorded(out: str | Path, flow_run_id: str) -> list[int]:
    """Kill every training process group recorded for ``flow_run_id`` (used by the flow's hooks)."""
    folder = pid_folder(out, flow_run_id)
    killed = []
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if stop_tree(int(path.name), KILL_GRACE_S):
            killed.append(int(path.name))
        path.unlink(missing_ok=True)
    return killed


class ProgressTail:
    """Follows a training run's ``metrics.jsonl`` and turns each new record into one console line
    (step, loss, images/s, it/s, ETA), so a long training is visible where the flow runs, not only in a file."""

    def __init__(self, metrics_path: Path, label: str, total_steps: int, batch_images: int,
                 echo: Callable[[str], None] = print):
        self.path, self.label, self.total, self.batch, self.echo = metrics_path, label, total_steps, batch_images, echo
        self.offset = 0
        self.first: tuple[int, float] | None = None  # (step, time) of the first record seen: ETA excludes start-up

    def poll(self) -> None:
        """Print a line for every complete record appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for raw in chunk[: end + 1].splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            metrics, step = record.get("metrics") or {}, record.get("step")
            if step is None or "loss" not in metrics:
                continue
            self.echo(self.line(int(step), metrics))

    def line(self, step: int, metrics: dict) -> str:
        """``[train baseline] step 400/2000 (20%) loss 0.4123 | 610 img/s 9.5 it/s | ETA 2m48s``."""
        now = time.monotonic()
        if self.first is None:
            self.first = (step, now)
        done_steps, elapsed = step - self.first[0], now - self.first[1]
        rate = done_steps / elapsed if done_steps > 0 and elapsed > 0 else metrics.get("images_per_s", 0.0) / self.batch
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta == eta else "?"
        return (f"[train {self.label}] step {step}/{self.total} ({100 * step / self.total:.0f}%) "
                f"loss {metrics['loss']:.4f} | {metrics.get('images_per_s', 0.0):.0f} img/s {rate:.1f} it/s | "
                f"ETA {eta_text}")


def run_training(config: GroupDiffConfig, run_dir: Path, world_size: int, env: dict[str, str], pids: Path,
                 echo: Callable[[str], None] | None = print) -> None:
    """Run the training subprocess to completion; kill its whole group if this call is interrupted.

    ``echo`` receives one progress line per logged training step (``None``: silent)."""
    config_path = write_launch_config(config, run_dir)
    log_path = run_dir / "train.log"
    child_env = {**env, PARENT_PID_ENV: str(os.getpid()), TRACKER_ENV: TRACKER,
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    pids.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = start(config_path, run_dir, world_size, env=child_env, cwd=REPO_ROOT, stdout=log,
                     stderr=subprocess.STDOUT)
    pid_file = pids / str(proc.pid)
    pid_file.write_text(json.dumps({"run_dir": str(run_dir)}))
    progress = None
    if echo is not None:
        progress = ProgressTail(run_dir / METRICS_FILE, config.train.variant, config.train.steps,
                                config.train.global_batch_images, echo)
    try:  # Prefect's own signal handling stays in place: cancellation raises here, and supervise stops the ranks
        code = supervise(proc, KILL_GRACE_S, poll=progress.poll if progress else None, poll_s=POLL_S,
                         trap_signals=False)
    finally:
        pid_file.unlink(missing_ok=True)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"training exited with code {code} (log {log_path}):\n{tail}")



def _ensure_limit(name: str, slots: int) -> tuple[int, int]:
    """Create the global concurrency limit ``name`` (``slots`` at once) if the Prefect API does not have it yet;
    an existing limit is left as it is (the pool's operator owns it). Returns (slots taken, limit) now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
            return found.active_slots, found.limit
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:
                pass
            return 0, slots


@task(**task_options("train"))
def train_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, dataset: dict, groups: dict | None,
               parent_run_id: str | None, world_size: int = 1, parent_checkpoint: dict | None = None) -> dict:
    """Train one variant and publish its final checkpoint to ``checkpoints/<run>/<step>/`` (or fetch the one
    already published under this digest), then record it in the catalogue."""
    from registry.layout import checkpoint_prefix

    from .data_tasks import MANIFEST, already_published, fetch

    rec = Records(records)
    run = f"{config.train.variant}-{digest}"
    prefix = checkpoint_prefix(run, config.train.steps)
    folder = rec.work("checkpoints", run, f"{config.train.steps:08d}")
    done = already_published(rec, prefix)
    if done is None:
        done = _train_and_publish(rec, config, digest, run, prefix, folder, groups, parent_run_id, world_size, dataset)
    else:
        fetch(rec, prefix, folder)
    assert (folder / MANIFEST).is_file()
    uri = rec.store.uri(prefix)
    _record_checkpoint(rec, done, digest, uri, dataset, groups, parent_checkpoint, config.train.variant)
    return {**done, "uri": uri, "path": str(folder)}


def _train_and_publish(rec: Records, config: GroupDiffConfig, digest: str, run: str, prefix: str, folder: Path,
                       groups: dict | None, parent_run_id: str | None, world_size: int, dataset: dict) -> dict:
    """Train inside the pool's training-slot limit (a nested MLflow run, with a dataset version as its MLflow
    dataset input), copy the last checkpoint's files to ``folder`` and publish it under ``prefix``; returns the
    published record.

    The run folder is keyed on the digest, so a re-run after a crash continues from its latest complete
    checkpoint (``train.resume=auto``), and a training that had finished (the run failed later, e.g. while
    publishing) is published without being launched again."""
    from .data_tasks import publish
    from .datasets import log_training_input

    log = get_run_logger()
    variant, step = config.train.variant, config.train.steps
    update = {"resume": "auto", **({"groups_path": groups["path"]} if groups is not None else {})}
    config = config.model_copy(update={"train": config.train.model_copy(update=update)})
    run_dir = rec.work("train", run)
    with stage_run(rec, parent_run_id, f"train-{variant}", config.model_dump()) as run_id:
        log_training_input(rec, run_id, dataset)
        latest = find_latest(run_dir)
        done_step = int(CheckpointDir(latest).read_state()["step"]) if latest is not None else 0
        if done_step >= step:
            log.info("training %s already finished in %s (checkpoint %s): publishing it", variant, run_dir, latest.name)
        else:
            if latest is not None:
                log.info("resuming training %s from its last complete checkpoint %s", variant, latest)
            _launch(rec, config, run_dir, world_size, run_id)
            latest = find_latest(run_dir)
        if latest is None:
            raise RuntimeError(f"training of {run} finished without a checkpoint in {run_dir}")
        for name in CheckpointDir.FILES:
            if (latest / name).is_file():
                shutil.copy2(latest / name, folder / name)
        state = CheckpointDir(latest).read_state()
        done = {"digest": digest, "run": run, "variant": variant, "step": step,
                "trained_steps": int(state.get("step", step)), "mlflow_run_id": run_id}
        publish(rec, prefix, folder, done)
        rec.mlflow.log_artifact(run_id, str(CheckpointDir(folder).config_file), "checkpoint")
    return done


def _launch(rec: Records, config: GroupDiffConfig, run_dir: Path, world_size: int, run_id: str) -> None:
    """Run the training subprocess to the end, holding one of the pool's training slots while it runs."""
    from prefect.concurrency.sync import concurrency
    from prefect.runtime import flow_run

    log = get_run_logger()
    limit = f"{CONCURRENCY_PREFIX}{rec.config.work_pool}"
    taken, slots = _ensure_limit(limit, rec.config.training_slots)
    if taken >= slots:  # said on the console: otherwise a queued training looks like a hung one
        log.info("waiting for a training slot: concurrency limit %r has %d of %d taken", limit, taken, slots)
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": rec.config.mlflow_uri}
    pids = pid_folder(rec.out, str(flow_run.get_id() or "local"))
    with concurrency(limit, occupy=1, lease_duration=LEASE_S):
        log.info("training %s (%d steps, world size %d) in %s", config.train.variant, config.train.steps,
                 world_size, run_dir)
        run_training(config, run_dir, world_size, env, pids, echo=console_echo(log))


def _record_checkpoint(rec: Records, done: dict, digest: str, uri: str, dataset: dict, groups: dict | None,
                       parent_checkpoint: dict | None, variant: str) -> None:
    """The checkpoint's catalogue row, linked to its dataset, group table (GroupDiff variants) and parent."""
    from registry.catalogue.models import Checkpoint, Dataset, GroupTable
    from registry.catalogue.records import record_checkpoint
    from sqlalchemy import select

    with rec.catalogue.begin() as session:
        ds = session.scalar(select(Dataset).where(Dataset.digest == dataset["digest"]))
        gt = session.scalar(select(GroupTable).where(GroupTable.digest == groups["digest"])) if groups else None
        parent = None
        if parent_checkpoint is not None:
            parent = session.scalar(select(Checkpoint).where(Checkpoint.digest == parent_checkpoint["digest"]))
        record_checkpoint(session, done["mlflow_run_id"], done["step"], digest, uri, ds,
                          gt if variant != "baseline" else None, parent, {"variant": variant})
