"""The local stack (DESIGN 2.4, tier 2): PostgreSQL, an S3 server (SeaweedFS), Prefect server + process
worker, MLflow server proxying artefacts to S3 — all on 127.0.0.1, all state under one folder. Exposed
(``StackConfig.expose``, ``groupdiff up --expose``), PostgreSQL, S3, Prefect and MLflow listen on 0.0.0.0
and every one requires credentials (``infra.auth``: read from the environment or an owner-only file, checked
before anything starts); SeaweedFS's internal ports and the worker's health port stay on 127.0.0.1.

``up(config)`` starts what is not running (twice is harmless), ``status(config)`` reports health,
``down(config)`` stops everything it started and keeps the data (PostgreSQL's cluster, SeaweedFS's
volumes), ``purge(config)`` then deletes that data. ``<state>/stack.env`` holds the variables clients need
(API addresses, the generated S3 credentials and, exposed, the other credentials; mode 0600, never printed).
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import shutil
import sys
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from . import mlflow_auth, postgres, seaweed
from .auth import StackSecrets, check_private
from .auth import load as load_secrets
from .config import ALL_SERVICES, DATABASES, REQUIRES, StackConfig
from .process import HOST, Service, ServiceError, http_ok, log_file, read_pid, running, start, stop

CONFIG_FILE = "stack.json"
ENV_FILE = "stack.env"
CREDENTIALS_FILE = "credentials.json"
S3_DIR = "s3"  # SeaweedFS: data/, identities.json, run/ (its unix sockets)
# What `purge` deletes: everything `up` writes into the state folder (nothing else there is touched).
STATE_ENTRIES = ("postgres", S3_DIR, "prefect", mlflow_auth.AUTH_DIR, "logs", "pids", CREDENTIALS_FILE, ENV_FILE,
                 CONFIG_FILE)
BIND_ALL = "0.0.0.0"  # where an exposed stack's services listen
# Where the Prefect server keeps concurrency-slot leases: on disk under PREFECT_HOME, not Prefect's default
# in-memory store. With the memory store a server restart forgets every lease while the database still counts
# their slots as taken: a training that held the slot then releases nothing (its lease is unknown), the
# repossessor never frees the slot of a killed one, and every later training waits for ever.
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


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
    """Generated secrets of the local stack, kept in ``<state>/credentials.json`` (0600; refused when its group
    or others can read it): the S3 keys and the MLflow auth app's CSRF key, each made once when missing."""
    path = state / CREDENTIALS_FILE
    data = {}
    if path.exists():
        check_private(path)
        data = json.loads(path.read_text())
    made = {"access_key": lambda: f"gd{secrets.token_hex(8)}", "secret_key": lambda: secrets.token_hex(20),
            "flask_secret_key": lambda: secrets.token_hex(32)}
    missing = {key: make() for key, make in made.items() if key not in data}
    if missing:
        state.mkdir(parents=True, exist_ok=True)
        data.update(missing)
        tmp = path.with_name(f".{CREDENTIALS_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    return data


def stack_secrets(config: StackConfig) -> StackSecrets | None:
    """The credentials an exposed stack needs (``infra.auth.load``; raises naming what is missing); None when
    the stack is not exposed."""
    return load_secrets(config.secrets_file) if config.expose else None


def client_env(config: StackConfig, given: StackSecrets | None = None) -> dict[str, str]:
    """Environment variables that point clients (our code, MLflow, Prefect) at this stack; exposed, with the
    credentials clients need (given, or read as :func:`stack_secrets` does)."""
    env = _base_env(config)
    if config.expose:
        env.update((given or stack_secrets(config)).client_env())
    return env


def _base_env(config: StackConfig) -> dict[str, str]:
    """Addresses and the generated S3 keys (what every client needs, exposed or not)."""
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


def services(config: StackConfig, given: StackSecrets | None = None) -> dict[str, Service]:
    """The service definitions of ``config`` (all five, whether selected or not). An exposed stack's servers
    get ``given`` (:func:`stack_secrets`) in their environments; without them the definitions serve
    ``status`` and ``down`` only."""
    state = config.state_dir.resolve()
    env = _base_env(config)
    bind = BIND_ALL if config.expose else HOST
    clients = given.client_env() if given else {}
    pg_password = {"PGPASSWORD": given.pg_password} if given else {}
    p = config.ports
    prefect_env = {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_API_URL": env["PREFECT_API_URL"],
        "PREFECT_UI_API_URL": env["PREFECT_API_URL"],
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url(p["postgres"], "prefect", driver="asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **pg_password,
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,  # <state>/prefect/concurrency_leases
    }
    if given:
        prefect_env.update(PREFECT_SERVER_API_AUTH_STRING=given.prefect_auth,  # the server's own clients too
                           PREFECT_API_AUTH_STRING=given.prefect_auth)
    worker_env = {
        "PREFECT_HOME": str(state / "prefect"), "PREFECT_API_URL": env["PREFECT_API_URL"],
        "PREFECT_WORKER_WEBSERVER_HOST": HOST, "PREFECT_WORKER_WEBSERVER_PORT": str(p["worker"]),
        **{k: env[k] for k in ("MLFLOW_TRACKING_URI", "GROUPDIFF_S3_ENDPOINT", "MLFLOW_S3_ENDPOINT_URL",
                               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GROUPDIFF_STORE_ROOT",
                               "GROUPDIFF_CATALOGUE_URL")},
        **clients,  # flow runs reach MLflow, Prefect and the catalogue with these
    }
    return {
        "postgres": _postgres(config, state, bind, given),
        "s3": seaweed.service(state / S3_DIR, p["s3"], config.s3_internal_ports, env["AWS_ACCESS_KEY_ID"],
                              env["AWS_SECRET_ACCESS_KEY"], expose_on=BIND_ALL if config.expose else None),
        "prefect": Service(
            "prefect", [_exe("prefect"), "server", "start", "--host", bind, "--port", str(p["prefect"])],
            p["prefect"], lambda: http_ok(f"http://{HOST}:{p['prefect']}/api/health"), env=prefect_env,
            url=f"http://{bind}:{p['prefect']}",
        ),
        "worker": Service(
            "worker", [_exe("prefect"), "worker", "start", "--pool", config.work_pool, "--type", "process",
                       "--with-healthcheck"],
            p["worker"], lambda: _worker_healthy(config, given), env=worker_env,
            url=f"work pool {config.work_pool!r}",
        ),
        "mlflow": _mlflow(config, state, env, bind, given),
    }


def _worker_healthy(config: StackConfig, given: StackSecrets | None) -> bool:
    """The worker answers its /health (which it does from the moment it starts) and its work pool exists (made on
    its first poll). An exposed server is not asked about the pool without its auth string (status, down)."""
    if not http_ok(f"http://{HOST}:{config.worker_port}/health"):
        return False
    if config.expose and not given:
        return True
    api = f"http://{HOST}:{config.prefect_port}/api"
    return work_pool_exists(api, config.work_pool, given.prefect_auth if given else None)


def _prefect_auth_headers(auth_string: str | None) -> dict[str, str] | None:
    """The Basic authorization header an exposed Prefect server asks for (``auth_string``: 'user:password')."""
    return {"Authorization": f"Basic {base64.b64encode(auth_string.encode()).decode()}"} if auth_string else None


def set_pool_limit(api_url: str, pool: str, limit: int | None, auth_string: str | None = None) -> int | None:
    """Set the flow-run concurrency limit of the work pool ``pool`` (None = unlimited) on the Prefect server at
    ``api_url``; returns the previous limit. ``auth_string``: an exposed server's."""
    import httpx

    with httpx.Client(base_url=api_url, headers=_prefect_auth_headers(auth_string), timeout=30) as client:
        path = f"/work_pools/{urllib.parse.quote(pool, safe='')}"
        response = client.get(path)
        response.raise_for_status()
        before = response.json().get("concurrency_limit")
        client.patch(path, json={"concurrency_limit": limit}).raise_for_status()
    return before


def work_pool_exists(api_url: str, pool: str, auth_string: str | None = None) -> bool:
    """True when the Prefect server at ``api_url`` has the work pool ``pool`` (the worker creates it on its first
    poll; until then deploying to it fails with 'Could not find work pool'). ``auth_string``: an exposed server's."""
    return http_ok(f"{api_url}/work_pools/{urllib.parse.quote(pool, safe='')}", headers=_prefect_auth_headers(auth_string))


def _postgres(config: StackConfig, state: Path, bind: str, given: StackSecrets | None) -> Service:
    """PostgreSQL; exposed, with SCRAM client rules and the password set just before it starts."""
    data, user = state / "postgres", postgres.os_user(config.pg_os_user)
    hba = data / postgres.EXPOSED_HBA if config.expose else None
    svc = postgres.service(data, config.pg_bin_dir, config.postgres_port, user, durable=config.pg_durable,
                           listen=bind, hba_file=hba)
    if given:
        def prepare() -> None:
            postgres.write_exposed_hba(data, user)
            postgres.set_password(data, config.pg_bin_dir, user, given.pg_password, log_file(state, "initdb"))

        svc.prepare = prepare
    return svc


def _mlflow(config: StackConfig, state: Path, env: dict[str, str], bind: str, given: StackSecrets | None) -> Service:
    """The MLflow server proxying artefacts to S3; exposed, MLflow's basic-auth app with its admin user."""
    port = config.mlflow_port
    argv = [_exe("mlflow"), "server", "--host", bind, "--port", str(port), "--workers", "1",
            "--backend-store-uri", postgres.url(config.postgres_port, "mlflow"),
            "--serve-artifacts", "--artifacts-destination", f"s3://{config.mlflow_bucket}/artifacts"]
    mlflow_env = {k: env[k] for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                      "AWS_DEFAULT_REGION")}
    mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if config.mlflow_jobs else "false"
    mlflow_env["MLFLOW_DISABLE_TELEMETRY"] = "true"  # as the clients (registry/__init__.py): nothing sent out
    prepare = None
    if config.expose:
        argv += ["--app-name", "basic-auth"]
    if given:
        folder = state / mlflow_auth.AUTH_DIR
        flask_key = credentials(state)["flask_secret_key"]
        mlflow_env.update(PGPASSWORD=given.pg_password, **mlflow_auth.server_env(folder, given, flask_key))

        def prepare() -> None:
            mlflow_auth.write_config(folder, config.mlflow_auth_cache_s)
            mlflow_auth.sync_admin(folder, given.mlflow_user, given.mlflow_password)

    return Service("mlflow", argv, port, lambda: http_ok(f"http://{HOST}:{port}/health"), env=mlflow_env,
                   url=f"http://{bind}:{port}", prepare=prepare)


def _make_buckets(config: StackConfig) -> None:
    """Create the artefact and MLflow buckets unless they exist, retrying while the S3 server finishes starting
    (its health check answers before the volume server has registered with the master)."""
    from minio import Minio
    from minio.error import S3Error

    env = _base_env(config)
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


def _write_env(config: StackConfig, given: StackSecrets | None) -> Path:
    state = config.state_dir.resolve()
    path = state / ENV_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    with os.fdopen(fd, "w") as f:
        f.write("# Generated by 'groupdiff up': source this file to use the local stack.\n")
        for key, value in client_env(config, given).items():
            f.write(f"export {key}={shlex.quote(value)}\n")
    (state / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    return path


def _refuse_mode_change(config: StackConfig) -> None:
    """A running stack keeps how it was started: exposing it (or closing it) needs ``down`` first."""
    state = config.state_dir.resolve()
    path = state / CONFIG_FILE
    alive = [name for name in ALL_SERVICES if running(state, name)]
    if not alive or not path.exists():
        return
    was = bool(json.loads(path.read_text()).get("expose", False))
    if was != config.expose:
        how = "exposed (--expose)" if was else "on 127.0.0.1 only"
        raise ServiceError(
            f"the stack in {state} runs {how} ({', '.join(alive)}); run 'groupdiff down --state-dir {state}' "
            f"before 'groupdiff up' {'without' if was else 'with'} --expose"
        )


def load_config(state_dir: Path | str = ".groupdiff-stack", **overrides) -> StackConfig:
    """The config recorded by the last ``up`` in ``state_dir`` (so down/status use its ports), else defaults."""
    path = Path(state_dir) / CONFIG_FILE
    data = json.loads(path.read_text()) if path.exists() else {"state_dir": str(state_dir)}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return StackConfig.model_validate(data)


def _start_one(name: str, svc: Service, config: StackConfig, given: StackSecrets | None) -> bool:
    """Start one service and run its one-time setup (cluster init, databases, buckets)."""
    state = config.state_dir.resolve()
    if name == "postgres":
        postgres.init_cluster(state / "postgres", config.pg_bin_dir, svc.user, log_file(state, "initdb"))
    started = start(svc, state, config.start_timeout_s)
    if name == "postgres":
        postgres.create_databases(config.postgres_port, DATABASES, password=given.pg_password if given else None)
    if name == "s3":
        _make_buckets(config)
    return started


def up(config: StackConfig, echo=print) -> dict[str, str]:
    """Start the selected services (skipping healthy ones), independent ones in parallel; returns addresses.

    On a failure the services this call started are stopped again and the first error propagates
    (services waiting on a failed dependency report that same error). An exposed stack's credentials are
    checked before anything starts (:class:`~infra.auth.CredentialsError` names what is missing).
    """
    state = config.state_dir.resolve()
    given = stack_secrets(config)
    _refuse_mode_change(config)
    state.mkdir(parents=True, exist_ok=True)
    defs = services(config, given)
    started: list[str] = []
    errors: list[BaseException] = []
    t0 = time.monotonic()
    futures: dict[str, Future] = {}

    def task(name: str) -> bool:
        for dep in REQUIRES[name]:
            if dep in futures:
                futures[dep].result()  # raises if the dependency failed
        return _start_one(name, defs[name], config, given)

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
    if "worker" in config.services:
        api = f"http://{HOST}:{config.prefect_port}/api"
        set_pool_limit(api, config.work_pool, config.pool_limit, given.prefect_auth if given else None)
        echo(f"work pool {config.work_pool!r}: "
             + (f"at most {config.pool_limit} flow runs at once" if config.pool_limit else "no limit on flow runs"))
    env_path = _write_env(config, given)
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
        "prefect": "Prefect home", mlflow_auth.AUTH_DIR: "MLflow users and permissions (exposed stack)",
        "logs": "service logs", "pids": "pid files", CREDENTIALS_FILE: "generated S3 credentials and CSRF key",
        ENV_FILE: "client settings", CONFIG_FILE: "stack settings (ports)",
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
