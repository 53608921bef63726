"""Cache locks (flows/locks.py): identical stage tasks running at once compute once, the other is ``Cached``;
a lock dies with its holder's process, so a killed run never leaves identical runs waiting."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.common import cache_policy
from flows.locks import FlockLockManager
from flows.records import RecordsConfig

HOLD = textwrap.dedent("""
    import sys, time
    from flows.locks import FlockLockManager
    assert FlockLockManager().acquire_lock(sys.argv[1], "child")
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def results_folder(tmp_path):
    """Prefect's local result storage (and so the lock folder) in ``tmp_path`` for this test."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "storage"}):
        yield tmp_path / "storage"


def test_a_lock_held_elsewhere_waits_and_dies_with_its_process(results_folder):
    env = {**os.environ, "PREFECT_LOCAL_STORAGE_PATH": str(results_folder),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", HOLD, "key-1"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        locks = FlockLockManager(poll_s=0.05)
        assert locks.is_locked("key-1") and not locks.is_locked("key-2")
        assert locks.acquire_lock("key-1", "me", acquire_timeout=0.3) is False
        os.kill(child.pid, signal.SIGKILL)  # no release: the kernel drops the lock with the process
        child.wait(10)
        start = time.monotonic()
        assert locks.acquire_lock("key-1", "me", acquire_timeout=5)
        assert time.monotonic() - start < 1
        assert locks.is_lock_holder("key-1", "me") and not locks.is_lock_holder("key-1", "other")
        with pytest.raises(ValueError, match="key-1"):
            locks.release_lock("key-1", "other")
        locks.release_lock("key-1", "me")
        assert not locks.is_locked("key-1")
    finally:
        child.kill()
        child.wait(10)


def test_threads_of_one_process_take_turns(results_folder):
    import threading

    locks, order = FlockLockManager(poll_s=0.02), []
    assert locks.acquire_lock("k", "a")
    other = threading.Thread(target=lambda: (locks.acquire_lock("k", "b"), order.append("b")))
    other.start()
    time.sleep(0.3)
    order.append("a")  # b is still waiting
    locks.release_lock("k", "a")
    other.join(5)
    assert order == ["a", "b"] and locks.is_lock_holder("k", "b")
    locks.release_lock("k", "b")


def test_identical_tasks_at_once_compute_once_and_the_other_is_cached(results_folder, tmp_path):
    """Two identical stage tasks submitted together (as two flow runs with the same parameters run them): one
    computes, the other waits on the cache key's lock and is served its result."""
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    marker = tmp_path / "computed"

    @task(cache_policy=cache_policy(), persist_result=True)
    def step(records: RecordsConfig, digest: str) -> int:
        with open(marker, "a") as f:
            f.write("x")
        time.sleep(1.0)
        return 7

    @flow
    def twice(records: RecordsConfig) -> list[tuple[str, int]]:
        futures = [step.submit(records, "same-digest") for _ in range(2)]
        return [(f.state.name, f.result()) for f in futures if f.wait() is None]

    with prefect_test_harness():
        states = twice(RecordsConfig(out=str(tmp_path / "out")))
    assert marker.read_text() == "x"
    assert sorted(states) == [("Cached", 7), ("Completed", 7)]
