"""The fault-injection suite's stack and tools.

* ``fault_stack`` (package scope): a private local stack (PostgreSQL, SeaweedFS S3, Prefect server + process
  worker, MLflow) on free ports of 127.0.0.1. Its services are stopped, killed and restarted by these tests,
  so the session's ``local_stack`` and the modules that use it never see a fault. Its worker polls every second.
* :class:`FlowInThread`: the pipeline flow run in a thread of the test (as ``groupdiff run`` runs it), so the
  test can act while it runs.
* :func:`wait_for_hold` / :func:`kill_training`: the checkpoint writer's hold hook
  (``GROUPDIFF_CHECKPOINT_HOLD``, ``groupdiff/train/checkpoint.py``) stops the training at an exact point; the
  test then SIGKILLs the training's process group, found through ``<out>/pids/<flow run>/<pgid>``.
* :class:`TripProxy` (``tests/faults/proxy.py``): a TCP proxy that stops a server at a chosen request.
"""
from __future__ import annotations

import contextvars
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.params import PipelineParams
from flows.records import RecordsConfig
from groupdiff.train.checkpoint import HOLD_ENV
from infra.process import free_stack_ports
from tests.conftest import client_environment
from tests.prefect_services import drain_prefect_services

WORKER_POLL_S = "1"  # the private worker's PREFECT_WORKER_QUERY_SECONDS (Prefect's default: 10)
FLOW_WAIT_S = 420
STOP_S = 5  # SIGTERM grace before SIGKILL when a service is stopped (throwaway stack; the default 20 s is
# what SeaweedFS and the Prefect worker take to exit on SIGTERM)
TINY = dict(  # the smallest pipeline: one variant, a one-block SiT, 40 samples
    variants=["baseline"], group_size=2, data_limit=200, batch_images=8, sampling_steps=2, num_samples=40,
    reference_limit=100, classifier_train_limit=200, threads=1, register_models=False,
    overrides=["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "embed.classifier.eval_limit=100",
               "embed.classifier.width=8", "embed.classifier.feature_dim=16"],
)


@dataclass
class FaultStack:
    """The private stack: its config, client environment, the flows' output folder and records settings."""

    config: object  # infra.config.StackConfig
    env: dict
    out: Path
    records: RecordsConfig

    def restart(self, *names: str) -> None:
        """Start every service that is not running (the ones a test stopped), on the same ports and data."""
        start_stack(self.config)
        from infra.stack import status

        rows = {r.name: r for r in status(self.config)}
        assert all(rows[n].healthy for n in names or rows), [(r.name, r.healthy) for r in rows.values()]


def start_stack(config) -> None:
    """``infra.stack.up`` with the worker polling every second and no hold hook in any service's environment."""
    from infra.stack import up

    with pytest.MonkeyPatch.context() as patch:  # the worker inherits these; restored after
        patch.setenv("PREFECT_WORKER_QUERY_SECONDS", WORKER_POLL_S)
        patch.delenv(HOLD_ENV, raising=False)
        up(config, echo=lambda _: None)


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    """A private running stack for the fault suite; the environment points clients (and in-process flows) at it."""
    from groupdiff.procs import stop_tree
    from infra.config import StackConfig
    from infra.process import group_alive, read_pid
    from infra.stack import client_env, down

    state = Path(tempfile.mkdtemp(prefix="groupdiff-faults-"))
    state.chmod(0o755)  # the unprivileged PostgreSQL user enters it
    config = StackConfig(state_dir=state, start_timeout_s=240, stop_timeout_s=STOP_S, pg_durable=False,
                         **free_stack_ports())
    env = client_env(config)
    out = tmp_path_factory.mktemp("faults-out")
    try:
        start_stack(config)
        with client_environment(env):
            try:
                yield FaultStack(config, env, out, RecordsConfig(out=str(out)))
            finally:
                drain_prefect_services()  # while this stack still answers; later tests talk to another server
    finally:
        for pgid in training_groups(out):  # a training left held by a failed test
            stop_tree(pgid, 1.0)
        clear_holds(out)
        pids = {name: read_pid(state, name) for name in config.services}
        _stop_all(config)
        assert down(config, echo=lambda _: None) == []  # nothing was left running
        shutil.rmtree(state, ignore_errors=True)
    left = [name for name, pid in pids.items() if pid is not None and group_alive(pid)]
    assert not left, f"processes left after down: {left}"


def _stop_all(config) -> None:
    """Stop every service at once (a throwaway stack has no shutdown order to keep: ``down`` stops them one
    after the other, each up to ``stop_timeout_s``), then remove what SeaweedFS leaves in /tmp as ``down`` does."""
    from concurrent.futures import ThreadPoolExecutor

    from infra import seaweed
    from infra.process import stop
    from infra.stack import services

    signals = {name: svc.stop_signal for name, svc in services(config).items()}
    state = config.state_dir.resolve()
    with ThreadPoolExecutor(len(signals)) as pool:
        list(pool.map(lambda name: stop(name, state, config.stop_timeout_s, signals[name]), signals))
    seaweed.remove_sockets(config.s3_port, config.s3_internal_ports)


class FlowInThread:
    """``pipeline(params, records)`` running in a thread of the test (with the caller's Prefect settings)."""

    def __init__(self, params: dict, records: RecordsConfig):
        self.params, self.records = PipelineParams(**params), records
        self.state, self.error = None, None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from flows.pipeline import pipeline

        try:
            self.state = pipeline(params=self.params, records=self.records, return_state=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the test by result()
            self.error = exc

    def alive(self) -> bool:
        return self.thread.is_alive()

    def result(self, timeout_s: float = FLOW_WAIT_S):
        """The flow run's final state (raises what the flow call raised, or on a timeout)."""
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the flow did not finish within {timeout_s}s"
        if self.error is not None:
            raise self.error
        return self.state


def wait_for_hold(out: Path, point: str, step: int, flow: FlowInThread | None = None, timeout_s: float = 240) -> Path:
    """The hold marker ``.hold-POINT-STEP`` of a training under ``out`` once the writer waits there."""
    name = f".hold-{point}-{step:08d}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = list(out.glob(f"work/train/*/checkpoints/{name}"))
        if found:
            return found[0]
        if flow is not None and not flow.alive():
            raise AssertionError(f"the flow ended before the training reached {point}:{step}: {flow.result(0)}")
        time.sleep(0.1)
    raise AssertionError(f"no training held at {point}:{step} under {out} within {timeout_s}s")


def training_groups(out: Path, flow_run_id: str = "*") -> list[int]:
    """Process-group ids of the trainings the flows recorded under ``<out>/pids/<flow run>/``."""
    return [int(p.name) for p in out.glob(f"pids/{flow_run_id}/*")]


def kill_training(out: Path, marker: Path) -> int:
    """SIGKILL the process group of the training held at ``marker`` (recorded by its flow); returns its id once
    the group is gone. The marker is removed so no later run finds it."""
    from groupdiff.procs import group_alive

    pid = int(marker.read_text())
    groups = training_groups(out)
    assert pid in groups, f"held training {pid} is not a recorded training group {groups}"
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while group_alive(pid, reap=False) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(pid, reap=False), f"training group {pid} survived SIGKILL"
    marker.unlink(missing_ok=True)
    return pid


def clear_holds(out: Path) -> None:
    """Remove hold markers left by killed trainings."""
    for marker in out.glob("work/train/*/checkpoints/.hold-*"):
        marker.unlink(missing_ok=True)


def artefact_problems(fault_stack) -> list:
    """``registry.consistency.check`` of the stack's records: every catalogue row or MLflow model version that
    points at a missing or corrupt artefact (unreferenced leftovers are not errors)."""
    from flows.records import Records
    from registry.consistency import CORRUPT, MISSING, check

    rec = Records(fault_stack.records)
    with rec.catalogue() as session:
        report = check(rec.store, session, rec.config.mlflow_uri)
    return report.of(MISSING) + report.of(CORRUPT)
