"""Restart PostgreSQL (Prefect's, MLflow's and the catalogue's database) under a running pipeline: held inside
its training, the flow goes on once the database is back (the Prefect server, the MLflow server and the
catalogue reconnect) and finishes with a registered champion, and no catalogue row or model version points at
an artefact that does not exist."""
from __future__ import annotations

import time
import uuid

import pytest

from flows.records import Records
from groupdiff.train.checkpoint import HOLD_ENV
from tests.faults.conftest import TINY, FlowInThread, artefact_problems, wait_for_hold

pytestmark = pytest.mark.integration

MODEL = f"gd-faults-pg-{uuid.uuid4().hex[:6]}"
PARAMS = {**TINY, "train_steps": 20, "checkpoint_every": 10, "register_models": True, "model_name": MODEL}


def test_postgres_restarted_under_a_running_flow(fault_stack, monkeypatch):
    from infra.process import read_pid, stop
    from infra.stack import services
    from registry.mlflow_registry import CHAMPION, version_by_alias

    config = fault_stack.config
    state_dir = config.state_dir.resolve()
    monkeypatch.setenv(HOLD_ENV, "done:10")
    t0 = time.monotonic()
    flow = FlowInThread(PARAMS, fault_stack.records)
    marker = wait_for_hold(fault_stack.out, "done", 10, flow)
    before = read_pid(state_dir, "postgres")
    t1 = time.monotonic()
    assert stop("postgres", state_dir, config.stop_timeout_s, services(config)["postgres"].stop_signal)
    time.sleep(2)  # the servers and the flow find the database gone
    fault_stack.restart("postgres")
    assert read_pid(state_dir, "postgres") != before
    print(f"postgres restart took {time.monotonic() - t1:.1f}s")
    marker.unlink()  # the training goes on
    state = flow.result()
    print(f"flow finished {time.monotonic() - t0:.1f}s after its start")
    assert state.is_completed(), state
    [row] = state.result()["rows"]
    rec = Records(fault_stack.records)
    champion = version_by_alias(rec.mlflow, MODEL, CHAMPION)
    assert champion is not None and str(champion.version) == str(row["version"]) and row["decision"] == "promoted"
    assert artefact_problems(fault_stack) == []
