"""Process setup: rendezvous without a launcher, DeepSpeed's process group, and launching N ranks.

* One process: :func:`ensure_rendezvous_env` fills ``MASTER_ADDR/PORT``, ``RANK``, ``WORLD_SIZE`` and
  ``LOCAL_RANK`` itself (a free port on 127.0.0.1) when no launcher did.
* ``--nproc N``: :func:`launch` starts ``torch.distributed.run`` with N local ranks running
  ``python -m groupdiff.train.worker``; with a hostfile it starts DeepSpeed's multi-node launcher
  instead (ssh/pdsh to every host listed; the run directory must be on a shared filesystem).
  The launcher runs in its own process group so that stopping the parent stops every rank.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from groupdiff.ports import free_port

WORKER_MODULE = "groupdiff.train.worker"


def ensure_rendezvous_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); sets a one-process rendezvous when no launcher set one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(
            MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(free_port()),
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
        )
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def device_type() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def init_distributed(dev_type: str, local_rank: int) -> None:
    """DeepSpeed's process group: NCCL on GPU, gloo on CPU (idempotent within a process)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if dev_type == "cuda" else "cpu")
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    if dev_type == "cuda":
        import torch

        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if dev_type == "cuda" else "gloo", verbose=False)


def launcher_command(config_path: Path, out_dir: Path, nproc: int, hostfile: str | None = None) -> list[str]:
    """The command that starts the ranks: torch.distributed.run locally, DeepSpeed's runner for a hostfile."""
    worker = ["--config", str(config_path), "--out", str(out_dir)]
    if hostfile:
        if not Path(hostfile).exists():
            raise FileNotFoundError(f"hostfile {hostfile!r} does not exist")
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", hostfile,
               "--master_port", str(free_port()), "--no_local_rank", "--module"]
        if nproc > 1:
            cmd[-1:-1] = ["--num_gpus", str(nproc)]
        return cmd + [WORKER_MODULE] + worker
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", WORKER_MODULE] + worker


def launch(config_path: Path, out_dir: Path, nproc: int, hostfile: str | None = None,
           env: dict[str, str] | None = None, grace_s: float = 30.0) -> int:
    """Run the ranks to completion in their own process group; returns the launcher's exit code.

    SIGTERM or Ctrl-C to this process stops the launcher and every rank: SIGTERM first (the launcher
    passes it on), then SIGKILL to all of them after ``grace_s``. Returns 128 + the signal number then.
    """
    cmd = launcher_command(config_path, out_dir, nproc, hostfile)
    child_env = {**os.environ, **(env or {})}
    if device_type() == "cpu":
        child_env.setdefault("DS_ACCELERATOR", "cpu")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        child_env.pop(key, None)  # a one-process rendezvous of this process must not leak into the ranks
    proc = subprocess.Popen(cmd, env=child_env, start_new_session=True)
    stopped: list[int] = []

    def on_signal(signum, _frame):  # only signal here: waiting inside a handler can deadlock Popen.wait
        stopped.append(signum)
        _signal_tree(proc.pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_signal) if _main_thread() else None
    try:
        while True:
            try:
                code = _wait_or_kill(proc, stopped, grace_s)
                break
            except KeyboardInterrupt:
                on_signal(signal.SIGINT, None)
        return 128 + stopped[0] if stopped else code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _wait_or_kill(proc: subprocess.Popen, stopped: list[int], grace_s: float) -> int:
    """Wait for ``proc``; once a stop was requested, SIGKILL the whole tree after ``grace_s``.

    While stopping, the processes below the launcher are remembered so that ranks it leaves behind
    (re-parented once it exits) are still killed.
    """
    since, known = None, set()
    while True:
        if stopped:
            known.update(_descendants(proc.pid))
        code = proc.poll()
        if code is not None:
            for pid in known:
                _kill(pid, signal.SIGKILL)
            return code
        if stopped:
            since = since or time.monotonic()
            if time.monotonic() - since > grace_s:
                _signal_tree(proc.pid, signal.SIGKILL)
        time.sleep(0.2)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc). The launchers start ranks in sessions of their own."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to the launcher's process group and to every process below it."""
    targets = _descendants(pid)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    for child in targets:
        _kill(child, sig)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
