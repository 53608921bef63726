"""The local stack (DESIGN 2.4, tier 2): PostgreSQL, an S3 server (SeaweedFS), Prefect server + process
worker, MLflow server proxying artefacts to S3 — all on 127.0.0.1, all state under one folder.

``up(config)`` starts what is not running (twice is harmless), ``status(config)`` reports health,
``down(config)`` stops everything it started and keeps the data (PostgreSQL's cluster, SeaweedFS's
volumes), ``purge(config)`` then deletes that data. ``<state>/stack.env`` holds the variables clients need
(API addresses and the generated S3 credentials; mode 0600, never printed).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from . import postgres, seaweed
from .config import ALL_SERVICES, DATABASES, REQUIRES, StackConfig
from .process import HOST, Service, ServiceError, http_ok, log_file, read_pid, running, start, stop

CONFIG_FILE = "stack.json"
ENV_FILE = "stack.env"
CREDENTIALS_FILE = "credentials.json"
S3_DIR = "s3"  # SeaweedFS: data/, identities.json, run/ (its unix sockets)
# What `purge` deletes: everything `up` writes into the state folder (nothing else there is touched).
STATE_ENTRIES = ("postgres", S3_DIR, "prefect", "logs", "pids", CREDENTIALS_FILE, ENV_FILE, CONFIG_FILE)


@dataclass
class ServiceStatus:
    """One line of ``groupdiff status``."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str | None
    log: Path


def _exe(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise ServiceError(f"{name!r} is not installed in this environment; pip install the 'platform' extra")
    return found


def credentials(state: Path) -> dict[str, str]:
    """S3 credentials of the local server, generated once and kept in ``<state>/credentials.json`` (0600)."""
    path = state / CREDENTIALS_FILE
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        data = {"access_key": f"gd{secrets.token_hex(8)}", "secret_key": secrets.token_hex(20)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
    return json.loads(path.read_text())


def client_env(config: StackConfig) -> dict[str, str]:
    """Environment variables that point clients (our code, MLflow, Prefect) at this stack."""
    creds = credentials(config.state_dir.resolve())
    s3 = f"http://{HOST}:{config.s3_port}"
    return {
        "PREFECT_API_URL": f"http://{HOST}:{config.prefect_port}/api",
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{config.mlflow_port}",
        "GROUPDIFF_S3_ENDPOINT": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": creds["access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
        "AWS_DEFAULT_REGION": config.region,
        "GROUPDIFF_STORE_ROOT": f"s3://{config.bucket}",
        "GROUPDIFF_CATALOGUE_URL": postgres.url(config.postgres_port, "catalogue"),
    }


def services(config: StackConfig) -> dict[str, Service]:
    """The service definitions of ``config`` (all five, whether selected or not)."""
    state = config.state_dir.resolve()
    env = client_env(config)
    pg_user = postgres.os_user(config.pg_os_user)
    p = config.ports
    prefect_env = {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_API_URL": env["PREFECT_API_URL"],
        "PREFECT_UI_API_URL": env["PREFECT_API_URL"],
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url(p["postgres"], "prefect", driver="asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    worker_env = {
        "PREFECT_HOME": str(state / "prefect"), "PREFECT_API_URL": env["PREFECT_API_URL"],
        "PREFECT_WORKER_WEBSERVER_HOST": HOST, "PREFECT_WORKER_WEBSERVER_PORT": str(p["worker"]),
        **{k: env[k] for k in ("MLFLOW_TRACKING_URI", "GROUPDIFF_S3_ENDPOINT", "MLFLOW_S3_ENDPOINT_URL",
                               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GROUPDIFF_STORE_ROOT",
                               "GROUPDIFF_CATALOGUE_URL")},
    }
    mlflow_env = {k: env[k] for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                      "AWS_DEFAULT_REGION")}
    mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if config.mlflow_jobs else "false"
    return {
        "postgres": postgres.service(state / "postgres", config.pg_bin_dir, p["postgres"], pg_user,
                                     durable=config.pg_durable),
        "s3": seaweed.service(state / S3_DIR, p["s3"], config.s3_internal_ports, env["AWS_ACCESS_KEY_ID"],
                              env["AWS_SECRET_ACCESS_KEY"]),
        "prefect": Service(
            "prefect", [_exe("prefect"), "server", "start", "--host", HOST, "--port", str(p["prefect"])],
            p["prefect"], lambda: http_ok(f"http://{HOST}:{p['prefect']}/api/health"), env=prefect_env,
            url=f"http://{HOST}:{p['prefect']}",
        ),
        "worker": Service(
            "worker", [_exe("prefect"), "worker", "start", "--pool", config.work_pool, "--type", "process",
                       "--with-healthcheck"],
            p["worker"], lambda: http_ok(f"http://{HOST}:{p['worker']}/health"), env=worker_env,
            url=f"work pool {config.work_pool!r}",
        ),
        "mlflow": Service(
            "mlflow", [_exe("mlflow"), "server", "--host", HOST, "--port", str(p["mlflow"]), "--workers", "1",
                       "--backend-store-uri", postgres.url(p["postgres"], "mlflow"),
                       "--serve-artifacts", "--artifacts-destination", f"s3://{config.mlflow_bucket}/artifacts"],
            p["mlflow"], lambda: http_ok(f"http://{HOST}:{p['mlflow']}/health"), env=mlflow_env,
            url=f"http://{HOST}:{p['mlflow']}",
        ),
    }


def _make_buckets(config: StackConfig) -> None:
    """Create the artefact and MLflow buckets unless they exist, retrying while the S3 server finishes starting
    (its health check answers before the volume server has registered with the master)."""
    from minio import Minio
    from minio.error import S3Error

    env = client_env(config)
    client = Minio(f"{HOST}:{config.s3_port}", access_key=env["AWS_ACCESS_KEY_ID"],
                   secret_key=env["AWS_SECRET_ACCESS_KEY"], secure=False, region=env["AWS_DEFAULT_REGION"])
    deadline = time.monotonic() + config.start_timeout_s
    for bucket in (config.bucket, config.mlflow_bucket):
        while True:
            try:
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
                break
            except (S3Error, OSError) as exc:
                if isinstance(exc, S3Error) and exc.code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                    raise ServiceError(
                        f"the S3 server at http://{HOST}:{config.s3_port} rejected the stack's credentials "
                        f"({exc.code}); is another server on that port?"
                    ) from None
                if time.monotonic() > deadline:
                    raise ServiceError(f"cannot create bucket {bucket!r} on http://{HOST}:{config.s3_port}: {exc}") from None
                time.sleep(0.25)


def _write_env(config: StackConfig) -> Path:
    state = config.state_dir.resolve()
    path = state / ENV_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Generated by 'groupdiff up': source this file to use the local stack.\n")
        for key, value in client_env(config).items():
            f.write(f"export {key}={value}\n")
    (state / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    return path


def load_config(state_dir: Path | str = ".groupdiff-stack", **overrides) -> StackConfig:
    """The config recorded by the last ``up`` in ``state_dir`` (so down/status use its ports), else defaults."""
    path = Path(state_dir) / CONFIG_FILE
    data = json.loads(path.read_text()) if path.exists() else {"state_dir": str(state_dir)}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return StackConfig.model_validate(data)


def _start_one(name: str, svc: Service, config: StackConfig) -> bool:
    """Start one service and run its one-time setup (cluster init, databases, buckets)."""
    state = config.state_dir.resolve()
    if name == "postgres":
        postgres.init_cluster(state / "postgres", config.pg_bin_dir, svc.user, log_file(state, "initdb"))
    started = start(svc, state, config.start_timeout_s)
    if name == "postgres":
        postgres.create_databases(config.postgres_port, DATABASES)
    if name == "s3":
        _make_buckets(config)
    return started


def up(config: StackConfig, echo=print) -> dict[str, str]:
    """Start the selected services (skipping healthy ones), independent ones in parallel; returns addresses.

    On a failure the services this call started are stopped again and the first error propagates
    (services waiting on a failed dependency report that same error).
    """
    state = config.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    defs = services(config)
    started: list[str] = []
    errors: list[BaseException] = []
    t0 = time.monotonic()
    futures: dict[str, Future] = {}

    def task(name: str) -> bool:
        for dep in REQUIRES[name]:
            if dep in futures:
                futures[dep].result()  # raises if the dependency failed
        return _start_one(name, defs[name], config)

    # each service starts as soon as what it REQUIRES is healthy (postgres and s3 at once, then prefect and
    # mlflow, the worker as soon as prefect answers)
    with ThreadPoolExecutor(max_workers=len(ALL_SERVICES)) as pool:
        for name in config.services:  # dependency order, so a dependency's future exists before its users
            futures[name] = pool.submit(task, name)
        for future in as_completed(futures.values()):
            name = next(n for n, f in futures.items() if f is future)
            try:
                fresh = future.result()
            except BaseException as exc:
                errors.append(exc)
                continue
            if fresh:
                started.append(name)
            echo(f"{'started' if fresh else 'running'} {name:<9} {defs[name].url}  ({time.monotonic() - t0:.1f}s)")
    if errors:
        for name in reversed(started):
            stop(name, state, config.stop_timeout_s, defs[name].stop_signal)
        raise errors[0]
    env_path = _write_env(config)
    echo(f"client settings: source {env_path}")
    return {name: defs[name].url or "" for name in config.services}


def status(config: StackConfig) -> list[ServiceStatus]:
    """Pid, liveness and health of every selected service."""
    state = config.state_dir.resolve()
    defs = services(config)
    out = []
    for name in config.services:
        alive = running(state, name)
        out.append(ServiceStatus(name, read_pid(state, name) if alive else None, alive,
                                 alive and defs[name].health(), defs[name].url, log_file(state, name)))
    return out


def purge(config: StackConfig, echo=print) -> list[Path]:
    """Delete the stack's data after ``down``: PostgreSQL's cluster (Prefect, MLflow, catalogue), SeaweedFS's
    objects, Prefect's home, logs, credentials and settings. Prints each entry with its size before deleting
    it; refuses while any service still runs. Only the entries ``up`` creates are touched (``STATE_ENTRIES``);
    the state folder itself goes when it is then empty. Returns the paths deleted."""
    state = config.state_dir.resolve()
    alive = [name for name in ALL_SERVICES if running(state, name)]
    if alive:
        raise ServiceError(f"cannot purge {state}: {', '.join(alive)} still running; run 'groupdiff down' first")
    found = [state / name for name in STATE_ENTRIES if (state / name).exists()]
    if not found:
        echo(f"nothing to purge in {state}")
        return []
    echo(f"purging the local stack's data in {state}:")
    for path in found:
        echo(f"  {path.name:<18} {_size(path) / 2**20:10.1f} MiB  {_what(path.name)}")
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    try:
        state.rmdir()
    except OSError:  # other files of the user's live there
        pass
    echo("purged")
    return found


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _what(name: str) -> str:
    return {
        "postgres": "PostgreSQL cluster: Prefect, MLflow and catalogue databases",
        S3_DIR: "SeaweedFS: every object of the artefact and MLflow buckets",
        "prefect": "Prefect home", "logs": "service logs", "pids": "pid files",
        CREDENTIALS_FILE: "generated S3 credentials", ENV_FILE: "client settings", CONFIG_FILE: "stack settings (ports)",
    }.get(name, "")


def down(config: StackConfig, echo=print) -> list[str]:
    """Stop every service recorded in the state folder (reverse dependency order); returns those stopped."""
    state = config.state_dir.resolve()
    signals = {name: svc.stop_signal for name, svc in services(config).items()}
    stopped = []
    for name in reversed(ALL_SERVICES):
        t0 = time.monotonic()
        if stop(name, state, config.stop_timeout_s, signals[name]):
            stopped.append(name)
            if name == "s3":
                seaweed.remove_sockets(config.s3_port, config.s3_internal_ports)
            echo(f"stopped {name} ({time.monotonic() - t0:.1f}s)")
    return stopped
