"""PostgreSQL from the Debian server binaries: a private data folder, 127.0.0.1 only, trust auth.

When started as root the server runs as ``pg_os_user`` (PostgreSQL refuses to run as root); the data
folder is then owned by that user and every folder above it must be traversable by it.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path

from .process import HOST, Service, ServiceError

SUPERUSER = "postgres"


def os_user(configured: str) -> str | None:
    """The OS user to run PostgreSQL as: ``configured`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(configured)
    except KeyError:
        raise ServiceError(
            f"running as root, PostgreSQL must run as another user, but user {configured!r} does not exist; "
            "create it (useradd --system postgres) or set pg_os_user"
        ) from None
    return configured


def _check_traversable(path: Path, user: str) -> None:
    """PostgreSQL (as ``user``) must reach ``path``: every ancestor needs the x bit for others or that user."""
    uid = pwd.getpwnam(user).pw_uid
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
            raise ServiceError(
                f"PostgreSQL runs as {user!r}, which cannot enter {parent} (mode {oct(st.st_mode & 0o777)}); "
                "choose a state folder outside it (--state-dir) or chmod o+x it"
            )


def init_cluster(data_dir: Path, bin_dir: Path, user: str | None, log: Path) -> bool:
    """``initdb`` a new cluster in ``data_dir`` unless one exists; returns True when created."""
    if (data_dir / "PG_VERSION").exists():
        return False
    initdb = bin_dir / "initdb"
    if not initdb.exists():
        raise ServiceError(f"initdb not found in {bin_dir}; install the Debian package postgresql or set pg_bin_dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    if user:
        _check_traversable(data_dir, user)
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    os.chmod(data_dir, 0o700)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(
            [str(initdb), "-D", str(data_dir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-instructions"],
            stdout=out, stderr=subprocess.STDOUT, user=user, cwd="/",
        )
    if done.returncode != 0:
        raise ServiceError(f"initdb failed with code {done.returncode}; see {log}")
    return True


def service(data_dir: Path, bin_dir: Path, port: int, user: str | None, durable: bool = True) -> Service:
    """The ``postgres`` server process (no Unix socket, TCP on 127.0.0.1 only; fsync off unless ``durable``)."""
    argv = [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port), "-c", f"listen_addresses={HOST}",
            "-c", "unix_socket_directories="]
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    ready = [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", SUPERUSER]

    def healthy() -> bool:
        return subprocess.run(ready, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    return Service("postgres", argv, port, healthy, user=user, stop_signal=signal.SIGINT,
                   url=f"postgresql://{SUPERUSER}@{HOST}:{port}")


def url(port: int, database: str, driver: str = "psycopg2") -> str:
    """SQLAlchemy URL of ``database`` on the local server."""
    return f"postgresql+{driver}://{SUPERUSER}@{HOST}:{port}/{database}"


def create_databases(port: int, names: tuple[str, ...] | list[str]) -> list[str]:
    """Create each database that does not exist yet; returns those created."""
    import psycopg2

    created = []
    conn = psycopg2.connect(host=HOST, port=port, user=SUPERUSER, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
    finally:
        conn.close()
    return created
