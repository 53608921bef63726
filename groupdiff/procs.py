"""Stopping process trees: the one helper behind ``groupdiff train --nproc``, the training flow and local services.

A launcher (``torch.distributed.run``, DeepSpeed's runner, a service) is started in a session of its own,
so its process group id is its pid. :func:`stop_tree` signals that group *and* every process below the
leader, since launchers start their ranks in sessions of their own; it waits ``grace_s`` for all of them
to exit, then SIGKILLs whatever is left. Processes are read from Linux ``/proc``; zombies count as gone.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

POLL_S = 0.1
KILL_WAIT_S = 5.0  # how long SIGKILLed processes get to disappear before stop_tree gives up
PARENT_PID_ENV = "GROUPDIFF_PARENT_PID"  # a worker kills its own process group once this pid is gone


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of ``pid`` from /proc, or None when it does not exist."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
    return fields[0], int(fields[1]), int(fields[2])


def _all_stats() -> dict[int, tuple[str, int, int]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                out[int(entry.name)] = stat
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def descendants(pid: int, stats: dict[int, tuple[str, int, int]] | None = None) -> list[int]:
    """Process ids below ``pid`` (children, their children, ...), whatever session they are in."""
    children: dict[int, list[int]] = {}
    for child, (_, ppid, _) in (stats if stats is not None else _all_stats()).items():
        children.setdefault(ppid, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def group_alive(pgid: int, reap: bool = True) -> bool:
    """True while any non-zombie process of the process group ``pgid`` runs.

    ``reap``: collect the leader's exit status first when it is our own child (a zombie leader would keep
    the group id in use); pass False when a :class:`subprocess.Popen` owns the leader and reaps it itself.
    """
    if reap:
        try:
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass
    if not Path("/proc/self/stat").exists():  # no /proc: ask the kernel (zombies then count as alive)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return any(state != "Z" and pgrp == pgid for state, _, pgrp in _all_stats().values())


def _send(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except ProcessLookupError:
        pass


def _tree(pgid: int) -> set[int]:
    """Processes below the leader ``pgid`` that left its group (a launcher's ranks in sessions of their own);
    empty unless ``pgid`` is a live group leader, so a reused pid's children are never touched. Members of
    the group are left out: killpg reaches them, and a second copy of a signal can abort a clean shutdown."""
    stats = _all_stats()
    if pgid not in stats or stats[pgid][2] != pgid:
        return set()
    return {pid for pid in descendants(pgid, stats) if stats[pid][2] != pgid}


def signal_tree(pgid: int, sig: int, also: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """Send ``sig`` to the process group ``pgid``, to every process below its leader and to ``also``;
    returns the pids signalled one by one (so a caller still reaches them once they are re-parented)."""
    targets = _tree(pgid) | set(also)
    _send(pgid, sig, group=True)
    for pid in targets:
        _send(pid, sig)
    return targets


def stop_tree(pgid: int, grace_s: float, sig: int = signal.SIGTERM, leader: subprocess.Popen | None = None,
              poll_s: float = POLL_S) -> bool:
    """Stop the process group ``pgid`` and every process below its leader: ``sig``, then SIGKILL after
    ``grace_s``, then wait up to :data:`KILL_WAIT_S` for them to go. True if anything was running.

    ``leader``: the group leader when it is our child (polled here, so a zombie leader does not look alive).
    """
    known = _tree(pgid)

    def running() -> bool:
        if leader is not None:
            leader.poll()
        known.difference_update([pid for pid in known if not alive(pid)])
        return group_alive(pgid, reap=leader is None) or bool(known)

    if not running():
        return False
    known.update(signal_tree(pgid, sig, known))
    for wait_s, next_sig in ((grace_s, signal.SIGKILL), (KILL_WAIT_S, None)):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            known.update(_tree(pgid))  # ranks the launcher starts or re-parents meanwhile are caught too
            if not running():
                _wait_reaped(pgid, deadline, poll_s)
                return True
            time.sleep(poll_s)
        if next_sig is not None:
            known.update(signal_tree(pgid, next_sig, known))
    return True


def _wait_reaped(pgid: int, deadline: float, poll_s: float) -> None:
    """Until ``deadline``, wait for the group id to vanish: its exited members are zombies until init
    reaps them (about a second), and callers should find the group gone when stop_tree returns."""
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(poll_s)


def watch_parent(parent: int, interval_s: float = 1.0) -> threading.Thread:
    """SIGKILL this process's group once ``parent`` is gone, so no worker outlives the process that started
    it when that one is killed without a chance to clean up (a daemon thread)."""
    def loop() -> None:
        while True:
            time.sleep(interval_s)
            if not alive(parent):
                os.killpg(os.getpgrp(), signal.SIGKILL)

    thread = threading.Thread(target=loop, name="parent-watchdog", daemon=True)
    thread.start()
    return thread
