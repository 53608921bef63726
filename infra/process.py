"""Background service processes: start with a health check, pid and log files, stop cleanly.

Each service runs in its own session (process group), so stopping signals the whole group (a server
and the workers it forked). Written by hand because no library does supervision of a handful of local
dev servers with pid files and health checks without a daemon of its own (supervisord, systemd).
"""
from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from groupdiff.ports import HOST, free_port, free_ports  # noqa: F401  (free_port(s) re-exported for callers of infra)
from groupdiff.procs import group_alive, stop_tree  # noqa: F401  (group_alive re-exported for callers of infra)

POLL_S = 0.25


class ServiceError(RuntimeError):
    """A service failed to start, became unhealthy or could not be stopped."""


class PortInUseError(ServiceError):
    """The port a service needs is already taken by another process."""


def free_stack_ports() -> dict:
    """``StackConfig`` port fields, every one a free port of 127.0.0.1 (SeaweedFS's internal ones included), so
    stacks started side by side (tests, benchmarks, other sessions) never collide."""
    from .config import SeaweedPorts

    services = ("postgres", "s3", "prefect", "worker", "mlflow")
    internal = tuple(SeaweedPorts.model_fields)
    picked = free_ports(len(services) + len(internal))
    ports: dict = {f"{n}_port": port for n, port in zip(services, picked)}
    ports["s3_internal_ports"] = SeaweedPorts(**dict(zip(internal, picked[len(services):])))
    return ports


@dataclass
class Service:
    """How to run one service: its command, port, health check and stop signal."""

    name: str
    argv: list[str]
    port: int | None
    health: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # run as this OS user (PostgreSQL refuses to run as root)
    stop_signal: int = signal.SIGTERM
    url: str | None = None  # address shown to people (UI / API)
    # further ports the process listens on, by the config field that sets each (checked free before starting)
    extra_ports: dict[str, int] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None  # run just before the process starts (files it reads)


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    """True when GET ``url`` (with ``headers``) answers 2xx."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_file(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.pid"


def log_file(state: Path, name: str) -> Path:
    return state / "logs" / f"{name}.log"


def read_pid(state: Path, name: str) -> int | None:
    """The recorded pid of ``name`` or None."""
    try:
        return int(pid_file(state, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def running(state: Path, name: str) -> bool:
    """True when the recorded process of ``name`` is alive."""
    pid = read_pid(state, name)
    return pid is not None and group_alive(pid)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (empty if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def start(service: Service, state: Path, timeout_s: float) -> bool:
    """Start ``service`` unless it already runs healthy; returns True if started, False if already up.

    Raises :class:`PortInUseError` when another process holds the port, :class:`ServiceError` when the
    process exits or stays unhealthy for ``timeout_s`` seconds (its log tail is in the message).
    """
    if running(state, service.name):
        if service.health():
            return False
        raise ServiceError(
            f"{service.name} (pid {read_pid(state, service.name)}) is running but unhealthy; "
            f"see {log_file(state, service.name)} or run 'groupdiff down'"
        )
    pid_file(state, service.name).unlink(missing_ok=True)  # stale
    if service.port is not None and port_in_use(service.port):
        raise PortInUseError(
            f"cannot start {service.name}: port {service.port} on {HOST} is already taken by another process; "
            f"stop that process or choose another port (groupdiff up --{service.name}-port N)"
        )
    for field_name, port in service.extra_ports.items():
        if port_in_use(port):
            raise PortInUseError(
                f"cannot start {service.name}: port {port} on {HOST} ({field_name}) is already taken by another "
                f"process; stop that process or choose another value for the stack setting {field_name}"
            )
    if service.prepare is not None:
        service.prepare()
    for sub in ("pids", "logs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    log_path = log_file(state, service.name)
    env = {**os.environ, **service.env}
    if service.user:
        env["HOME"] = pwd.getpwnam(service.user).pw_dir
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            service.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, user=service.user, cwd=state,
        )
    pid_file(state, service.name).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file(state, service.name).unlink(missing_ok=True)
            raise ServiceError(
                f"{service.name} exited with code {proc.returncode} while starting; last log lines "
                f"({log_path}):\n{tail(log_path)}"
            )
        if service.health():
            return True
        time.sleep(POLL_S)
    stop(service.name, state, timeout_s=10, sig=service.stop_signal)
    raise ServiceError(
        f"{service.name} did not become healthy within {timeout_s:.0f}s; last log lines ({log_path}):\n{tail(log_path)}"
    )


def stop(name: str, state: Path, timeout_s: float, sig: int = signal.SIGTERM) -> bool:
    """Stop the process group of ``name``: ``sig``, then SIGKILL after ``timeout_s``. True if it was running."""
    pid = read_pid(state, name)
    if pid is None:
        return False
    was_running = stop_tree(pid, timeout_s, sig=sig, poll_s=POLL_S)
    if was_running and group_alive(pid):
        raise ServiceError(f"{name} (process group {pid}) survived SIGKILL")
    pid_file(state, name).unlink(missing_ok=True)
    return was_running
