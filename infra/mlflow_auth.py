"""MLflow's basic-auth app on an exposed stack (``mlflow server --app-name basic-auth``, MLflow 3.17).

Its settings file (``MLFLOW_AUTH_CONFIG_PATH``) names the user database (SQLite under the state folder) and
holds no secret: the admin user and password reach the server as ``MLFLOW_AUTH_ADMIN_USERNAME`` /
``MLFLOW_AUTH_ADMIN_PASSWORD`` (MLflow creates that admin on first start and refuses to start without a
password), the CSRF key as ``MLFLOW_FLASK_SERVER_SECRET_KEY``. MLflow ignores a changed bootstrap password
once the admin exists, so :func:`sync_admin` sets it in the user database before each start: the password
clients are given is always the one that works.
"""
from __future__ import annotations

import os
from pathlib import Path

from .auth import StackSecrets

AUTH_DIR = "mlflow-auth"  # under the state folder: basic_auth.ini and basic_auth.db
# Permission of authenticated non-admin users on what they did not create (MLflow's default); anonymous
# requests are refused whatever this says.
DEFAULT_PERMISSION = "READ"


def database_uri(folder: Path) -> str:
    """The SQLite database of MLflow users and permissions."""
    return f"sqlite:///{folder / 'basic_auth.db'}"


def write_config(folder: Path, cache_s: int) -> Path:
    """Write ``basic_auth.ini`` (mode 0600; verified credentials cached ``cache_s`` seconds) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / "basic_auth.ini"
    text = ("[mlflow]\n"
            f"default_permission = {DEFAULT_PERMISSION}\n"
            f"database_uri = {database_uri(folder)}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {cache_s}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def sync_admin(folder: Path, user: str, password: str) -> bool:
    """When the user database exists and ``user`` is in it, make ``password`` its password and the user an
    admin; returns True when something changed. A new database is left to MLflow's own bootstrap."""
    if not (folder / "basic_auth.db").exists():
        return False
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri(folder))
    if not store.has_user(user):
        return False
    changed = not store.authenticate_user(user, password)
    if changed:
        store.update_user(user, password=password)
    if not store.get_user(user).is_admin:
        store.update_user(user, is_admin=True)
        changed = True
    return changed


def server_env(folder: Path, secrets: StackSecrets, flask_key: str) -> dict[str, str]:
    """What the MLflow server process needs to run the basic-auth app."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": secrets.mlflow_user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.mlflow_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_key,
    }
