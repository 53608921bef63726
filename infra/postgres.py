"""PostgreSQL from the Debian server binaries: a private data folder, 127.0.0.1 only, trust auth; on an
exposed stack every interface and every connection needs the password (SCRAM-SHA-256).

When started as root the server runs as ``pg_os_user`` (PostgreSQL refuses to run as root); the data
folder is then owned by that user and every folder above it must be traversable by it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import signal
import subprocess
from pathlib import Path

from .process import HOST, Service, ServiceError

SUPERUSER = "postgres"
EXPOSED_HBA = "pg_hba_exposed.conf"  # in the data folder; used instead of pg_hba.conf when exposed
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


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


def service(data_dir: Path, bin_dir: Path, port: int, user: str | None, durable: bool = True,
            listen: str = HOST, hba_file: Path | None = None) -> Service:
    """The ``postgres`` server process (no Unix socket, TCP on ``listen``; fsync off unless ``durable``;
    ``hba_file`` replaces the cluster's trust rules, see :func:`write_exposed_hba`)."""
    argv = [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port), "-c", f"listen_addresses={listen}",
            "-c", "unix_socket_directories="]
    if hba_file is not None:
        argv += ["-c", f"hba_file={hba_file}"]
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    ready = [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", SUPERUSER]

    def healthy() -> bool:
        return subprocess.run(ready, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    return Service("postgres", argv, port, healthy, user=user, stop_signal=signal.SIGINT,
                   url=f"postgresql://{SUPERUSER}@{listen}:{port}")


def write_exposed_hba(data_dir: Path, user: str | None) -> Path:
    """The client rules of an exposed server: every TCP connection, from anywhere, authenticates with SCRAM."""
    path = data_dir / EXPOSED_HBA
    path.write_text("# written by 'groupdiff up --expose': every connection needs the password\n"
                    "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    os.chmod(path, 0o600)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677): what ALTER ROLE is given,
    so the password itself never reaches the server, its logs or its catalogue."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server = hmac.digest(salted, b"Server Key", "sha256")
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def set_password(data_dir: Path, bin_dir: Path, user: str | None, password: str, log: Path) -> None:
    """Give the superuser ``password`` (as its SCRAM verifier) in single-user mode, before the server starts."""
    sql = f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_verifier(password)}';\n"
    argv = [str(bin_dir / "postgres"), "--single", "-D", str(data_dir), "-c", "listen_addresses=",
            "-c", "unix_socket_directories=", "postgres"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(argv, input=sql.encode(), stdout=out, stderr=subprocess.STDOUT, user=user, cwd="/")
    if done.returncode != 0:
        raise ServiceError(f"setting the PostgreSQL password in single-user mode failed (code {done.returncode}); "
                           f"see {log}")


def url(port: int, database: str, driver: str = "psycopg2") -> str:
    """SQLAlchemy URL of ``database`` on the local server."""
    return f"postgresql+{driver}://{SUPERUSER}@{HOST}:{port}/{database}"


def create_databases(port: int, names: tuple[str, ...] | list[str], password: str | None = None) -> list[str]:
    """Create each database that does not exist yet; returns those created."""
    import psycopg2

    created = []
    conn = psycopg2.connect(host=HOST, port=port, user=SUPERUSER, dbname="postgres", password=password)
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
