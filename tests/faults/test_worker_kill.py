"""SIGKILL the Prefect worker while a deployment run it started is training: the run is marked crashed, its
training process group does not survive it, and a re-run of the deployment (worker restarted) resumes from the
last complete checkpoint and completes."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from groupdiff.train.checkpoint import HOLD_ENV, CheckpointDir, find_latest
from tests.faults.conftest import TINY, training_groups, wait_for_hold

pytestmark = pytest.mark.integration

STEPS = 200
PARAMS = {**TINY, "train_steps": STEPS, "checkpoint_every": 10, "seed": 1}
DONE = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _create(api: str, dep_id: str, out: Path, env: dict | None = None) -> str:
    body = {"parameters": {"params": PARAMS, "records": {"out": str(out)}}}
    if env:
        body["job_variables"] = {"env": env}
    created = httpx.post(f"{api}/deployments/{dep_id}/create_flow_run", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _wait(api: str, run_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}").json()
        if run["state"]["type"] in DONE:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} still {run['state']['type']} after {timeout_s}s")


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _processes_in(run_dir: Path) -> list[int]:
    """Live processes whose command line names ``run_dir`` (a training of that run)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(run_dir) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                if (proc / "stat").read_text().split(") ")[1][0] != "Z":
                    found.append(int(proc.name))
        except OSError:
            pass
    return found


def test_worker_killed_mid_run(fault_stack):
    from flows.deployments import deploy
    from infra.process import group_alive, read_pid

    api, out, state_dir = fault_stack.env["PREFECT_API_URL"], fault_stack.out, fault_stack.config.state_dir.resolve()
    pool = fault_stack.config.work_pool
    deadline = time.monotonic() + 60  # the worker creates its pool on its first poll, after it reports healthy
    while httpx.get(f"{api}/work_pools/{pool}").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.5)
    t_deploy = time.monotonic()
    deploy(pool)
    dep_id = httpx.get(f"{api}/deployments/name/groupdiff-pipeline/groupdiff-pipeline").json()["id"]
    t0 = time.monotonic()
    run_id = _create(api, dep_id, out, {HOLD_ENV: "done:10"})
    marker = wait_for_hold(out, "done", 10)
    first = httpx.get(f"{api}/flow_runs/{run_id}").json()
    print(f"deployed in {t0 - t_deploy:.1f}s; run started {_seconds(first['created'], first['start_time']):.1f}s "
          f"after its creation, held at step 10 after {time.monotonic() - t0:.1f}s")
    run_dir = marker.parent.parent
    [pgid] = training_groups(out, run_id)
    worker = read_pid(state_dir, "worker")
    os.kill(worker, signal.SIGKILL)
    while group_alive(worker):
        time.sleep(0.1)
    t1 = time.monotonic()
    print(f"worker killed {t1 - t0:.1f}s after the run was created, at step 10 of {STEPS}")
    marker.unlink()  # the training goes on, its flow process now without a worker

    run = _wait(api, run_id, 120)
    print(f"run {run['state']['type']} {time.monotonic() - t1:.1f}s after the worker died")
    assert run["state"]["type"] == "CRASHED", run["state"]
    deadline = time.monotonic() + 20
    while (group_alive(pgid, reap=False) or _processes_in(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(pgid, reap=False) and not _processes_in(run_dir), "the training outlived its run"
    latest = find_latest(run_dir)
    reached = CheckpointDir(latest).read_state()["step"]
    assert 10 <= reached < STEPS, reached

    fault_stack.restart("worker")
    t2 = time.monotonic()
    again = _wait(api, _create(api, dep_id, out), 300)
    print(f"re-run {again['state']['type']} in {time.monotonic() - t2:.1f}s, resumed from step {reached}")
    assert again["state"]["type"] == "COMPLETED", again["state"]
    report = json.loads((run_dir / "init_report.json").read_text())
    assert report["mode"] == "resume" and report["source"] == str(latest), report
    assert find_latest(run_dir).name == f"step_{STEPS:08d}"
