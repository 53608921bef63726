"""Credentials of an exposed stack (``groupdiff up --expose``).

They come from the environment or from a file of ``NAME=VALUE`` lines that only its owner can read (mode
0600), never from flow parameters, configs or the command line, and they are checked before any service
starts. Each is read under the name its clients read it by, so the environment that starts the stack is the
environment a client needs: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (MLflow's basic-auth
app: its admin user), ``PREFECT_API_AUTH_STRING`` (``user:password``; the server gets it as
``PREFECT_SERVER_API_AUTH_STRING``) and ``PGPASSWORD`` (libpq, psycopg2 and asyncpg read it, so no database URL
ever carries the password). The S3 keys are the generated ones in ``<state>/credentials.json``.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .process import ServiceError

# What an exposed stack needs, by the variable clients read it from.
REQUIRED: dict[str, str] = {
    "MLFLOW_TRACKING_USERNAME": "the MLflow admin user (MLflow's basic-auth app)",
    "MLFLOW_TRACKING_PASSWORD": "that user's MLflow password",
    "PREFECT_API_AUTH_STRING": "the Prefect server's auth string 'user:password'",
    "PGPASSWORD": "the password of PostgreSQL's 'postgres' role",
}
# MLflow's password policy (mlflow.utils.validation._validate_password), applied to every password here.
MIN_PASSWORD_CHARS = 12


class CredentialsError(ServiceError):
    """A credential of an exposed stack is missing, too weak, or in a file others can read."""


@dataclass(frozen=True)
class StackSecrets:
    """The credentials of an exposed stack (never printed: ``repr`` hides them)."""

    mlflow_user: str
    mlflow_password: str
    prefect_auth: str
    pg_password: str

    def __repr__(self) -> str:
        return f"StackSecrets(mlflow_user={self.mlflow_user!r}, <secrets hidden>)"

    def client_env(self) -> dict[str, str]:
        """The variables a client (our flows, the MLflow and Prefect clients, libpq) reads them from."""
        return {"MLFLOW_TRACKING_USERNAME": self.mlflow_user, "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
                "PREFECT_API_AUTH_STRING": self.prefect_auth, "PGPASSWORD": self.pg_password}

    def secret_values(self) -> list[str]:
        """Every value that must never appear in a log or a record (the auth string and its password part)."""
        return [self.mlflow_password, self.prefect_auth, self.prefect_auth.split(":", 1)[1], self.pg_password]


def check_private(path: Path) -> None:
    """Refuse a credentials file that its group or other users can read or write."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CredentialsError(
            f"{path} holds credentials but has mode {mode:04o} (its group or other users can access it); "
            f"run 'chmod 600 {path}' and try again"
        )


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=VALUE`` lines (``export`` prefix, quotes and ``#`` comment lines allowed) of an owner-only file."""
    if not path.is_file():
        raise CredentialsError(f"secrets file {path} does not exist; expected a file of NAME=VALUE lines (mode 0600)")
    check_private(path)
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not name.strip().isidentifier():
            raise CredentialsError(f"{path} line {number}: expected NAME=VALUE, got a line without one")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def load(secrets_file: Path | None, environ: Mapping[str, str] = os.environ) -> StackSecrets:
    """The exposed stack's credentials: each from ``environ``, else from ``secrets_file``. Raises one
    :class:`CredentialsError` naming every missing or unusable one."""
    found = dict(read_env_file(Path(secrets_file))) if secrets_file else {}
    found.update({name: environ[name] for name in REQUIRED if environ.get(name)})
    where = f"the environment or {secrets_file}" if secrets_file else "the environment (or --secrets-file FILE)"
    missing = [f"{name} ({what})" for name, what in REQUIRED.items() if not found.get(name)]
    if missing:
        raise CredentialsError(f"--expose needs credentials, missing from {where}: {'; '.join(missing)}")
    user, _, auth_password = found["PREFECT_API_AUTH_STRING"].partition(":")
    problems = [f"{name} is shorter than {MIN_PASSWORD_CHARS} characters"
                for name in ("MLFLOW_TRACKING_PASSWORD", "PGPASSWORD") if len(found[name]) < MIN_PASSWORD_CHARS]
    if not user or len(auth_password) < MIN_PASSWORD_CHARS:
        problems.append(f"PREFECT_API_AUTH_STRING must be 'user:password' with a password of at least "
                        f"{MIN_PASSWORD_CHARS} characters")
    if ":" in found["MLFLOW_TRACKING_USERNAME"]:
        problems.append("MLFLOW_TRACKING_USERNAME must not contain ':' (HTTP basic auth)")
    if problems:
        raise CredentialsError(f"unusable credentials for --expose (from {where}): {'; '.join(problems)}")
    return StackSecrets(found["MLFLOW_TRACKING_USERNAME"], found["MLFLOW_TRACKING_PASSWORD"],
                        found["PREFECT_API_AUTH_STRING"], found["PGPASSWORD"])
