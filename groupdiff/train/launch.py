"""Process setup: rendezvous without a launcher, DeepSpeed's process group, and launching N ranks.

* One process: :func:`ensure_rendezvous_env` fills ``MASTER_ADDR/PORT``, ``RANK``, ``WORLD_SIZE`` and
  ``LOCAL_RANK`` itself (a free port on 127.0.0.1) when no launcher did.
* :func:`launcher_command` is the one place a training launch is spelled: ``python -m groupdiff.train_worker``
  for one rank, ``torch.distributed.run`` for N local ranks, DeepSpeed's multi-node launcher for a hostfile
  (ssh/pdsh to every host listed; the run directory must be on a shared filesystem). ``groupdiff train
  --nproc`` and the training flow both :func:`start` it and :func:`supervise` it to the end.
* The launcher runs in a session of its own; stopping it stops every rank (:func:`groupdiff.procs.stop_tree`).
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
from typing import Callable

from ..atomic import write_text_atomic
from ..ports import free_port
from ..procs import stop_tree

WORKER_MODULE = "groupdiff.train_worker"
LAUNCH_CONFIG = "launch_config.json"  # the config every rank reads, in the run folder


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


def write_launch_config(config, out_dir: str | Path) -> Path:
    """Write ``config`` (a GroupDiffConfig) as ``<out_dir>/launch_config.json`` for the ranks; returns its path."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_text_atomic(Path(out_dir) / LAUNCH_CONFIG, config.model_dump_json(indent=2))


def launcher_command(config_path: str | Path, out_dir: str | Path, nproc: int,
                     hostfile: str | None = None) -> list[str]:
    """The command that starts the ranks: the worker itself for one local rank, torch.distributed.run for
    ``nproc`` local ranks, DeepSpeed's runner for a hostfile."""
    worker = ["--config", str(config_path), "--out", str(out_dir)]
    if hostfile:
        if not Path(hostfile).exists():
            raise FileNotFoundError(f"hostfile {hostfile!r} does not exist")
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", hostfile,
               "--master_port", str(free_port()), "--no_local_rank", "--module"]
        if nproc > 1:
            cmd[-1:-1] = ["--num_gpus", str(nproc)]
        return cmd + [WORKER_MODULE] + worker
    if nproc == 1:
        return [sys.executable, "-m", WORKER_MODULE] + worker
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", WORKER_MODULE] + worker


def start(config_path: str | Path, out_dir: str | Path, nproc: int, hostfile: str | None = None,
          env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start :func:`launcher_command` in a session of its own (its process group id is its pid).

    ``env`` is added to this process's environment; ``popen``: further :class:`subprocess.Popen` arguments
    (``stdout``, ``cwd``).
    """
    cmd = launcher_command(config_path, out_dir, nproc, hostfile)
    child_env = {**os.environ, **(env or {})}
    if device_type() == "cpu":
        child_env.setdefault("DS_ACCELERATOR", "cpu")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        child_env.pop(key, None)  # a one-process rendezvous of this process must not leak into the ranks
    return subprocess.Popen(cmd, env=child_env, start_new_session=True, **popen)


def supervise(proc: subprocess.Popen, grace_s: float, poll: Callable[[], None] | None = None,
              poll_s: float = 0.2, trap_signals: bool = True) -> int:
    """Wait for the launcher ``proc``; returns its exit code, or 128 + the signal number when stopped.

    With ``trap_signals``, SIGTERM (on the main thread) or Ctrl-C to this process stops the launcher and
    every rank: SIGTERM first, SIGKILL after ``grace_s``. Any exception while waiting (Ctrl-C without
    ``trap_signals``) stops them the same way and propagates. ``poll`` is called every ``poll_s`` seconds and once more at the end (progress).
    """
    stopped: list[int] = []

    def on_signal(signum, _frame):  # only note it here: waiting inside a handler can deadlock Popen.wait
        stopped.append(signum)

    previous = signal.signal(signal.SIGTERM, on_signal) if trap_signals and _main_thread() else None
    try:
        while proc.poll() is None and not stopped:
            try:
                time.sleep(poll_s)
            except KeyboardInterrupt:
                if not trap_signals:
                    raise
                stopped.append(signal.SIGINT)
            if poll is not None:
                poll()
        if stopped:
            stop_tree(proc.pid, grace_s, leader=proc)
            proc.wait()
            return 128 + stopped[0]
        if poll is not None:
            poll()
        return proc.returncode
    finally:
        if proc.poll() is None:
            stop_tree(proc.pid, grace_s, leader=proc)
            proc.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def launch(config_path: str | Path, out_dir: str | Path, nproc: int, hostfile: str | None = None,
           env: dict[str, str] | None = None, grace_s: float = 30.0) -> int:
    """Run the ranks to completion in their own process group; returns the launcher's exit code
    (128 + the signal number when SIGTERM or Ctrl-C stopped them, see :func:`supervise`)."""
    return supervise(start(config_path, out_dir, nproc, hostfile, env), grace_s)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
