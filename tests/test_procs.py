"""groupdiff.procs.stop_tree: the one way a launcher, its ranks or a service are stopped."""
from __future__ import annotations

import subprocess
import sys
import time

from groupdiff.procs import alive, group_alive, stop_tree

# a launcher that ignores SIGTERM, with one child in its group and one in a session of its own (like ranks)
LAUNCHER = ("import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "a = subprocess.Popen(['sleep', '600']); b = subprocess.Popen(['sleep', '600'], start_new_session=True); "
            "print(a.pid, b.pid, flush=True); time.sleep(600)")


def test_stop_tree_reaches_ranks_in_other_sessions_and_kills_after_the_grace(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        in_group, own_session = map(int, proc.stdout.readline().split())
        started = time.monotonic()
        assert stop_tree(proc.pid, grace_s=1.0, leader=proc)
        took = time.monotonic() - started
        assert proc.returncode == -9  # it ignored SIGTERM: SIGKILLed once the grace was over
        assert took >= 1.0
        assert not alive(in_group) and not alive(own_session) and not group_alive(proc.pid, reap=False)
        assert not stop_tree(proc.pid, grace_s=1.0, leader=proc)  # nothing left to stop
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_tree_returns_as_soon_as_everything_exited():
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    started = time.monotonic()
    assert stop_tree(proc.pid, grace_s=30.0, leader=proc)
    assert time.monotonic() - started < 10 and proc.returncode == -15
