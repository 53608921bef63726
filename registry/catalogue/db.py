"""Connecting to the catalogue database and migrating it with Alembic."""
from __future__ import annotations

import os
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

# Drivers installed with the 'platform' extra. SQLAlchemy 2.1 reads a bare 'postgresql://' as psycopg 3.
SUPPORTED_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg2")


def safe_url(url: str) -> str:
    """``url`` with any password masked (for messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def check_url(url: str) -> str:
    """Validate a catalogue URL (supported driver, a database named); returns it unchanged."""
    shown = safe_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"catalogue URL {shown!r} is malformed; expected 'sqlite:///PATH' or "
            "'postgresql+psycopg2://USER@HOST:PORT/DB'"
        ) from None
    driver = parsed.drivername
    if driver == "postgresql":
        raise ValueError(
            f"catalogue URL {shown!r}: write the driver explicitly, 'postgresql+psycopg2://...' "
            "(a bare 'postgresql://' means psycopg 3 in SQLAlchemy 2.1, which is not installed)"
        )
    if driver not in SUPPORTED_DRIVERS:
        raise ValueError(f"catalogue URL {shown!r}: driver {driver!r} is not supported; expected one of {SUPPORTED_DRIVERS}")
    if not parsed.database:
        raise ValueError(f"catalogue URL {shown!r} names no database (file path or database name)")
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (the parent folder of a SQLite file is created)."""
    check_url(url)
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url, pool_pre_ping=True)


def alembic_config() -> Config:
    """Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "migrations"))
    return cfg


def _run(engine: Engine, fn, *args) -> None:
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        fn(cfg, *args)


def upgrade_to_head(url: str) -> str:
    """Apply every migration to the database at ``url``; returns the head revision."""
    engine = make_engine(url)
    try:
        _run(engine, command.upgrade, "head")
    finally:
        engine.dispose()
    return head_revision()


def downgrade(url: str, revision: str = "base") -> None:
    """Revert migrations down to ``revision`` ('base' = empty database)."""
    engine = make_engine(url)
    try:
        _run(engine, command.downgrade, revision)
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest migration id."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(url: str) -> str | None:
    """The migration id the database at ``url`` is at (None when unmigrated)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def default_url() -> str:
    """``$GROUPDIFF_CATALOGUE_URL`` (set by the local stack / compose) or the SQLite default of the config."""
    from ..config import ENV_CATALOGUE_URL, CatalogueConfig

    return os.environ.get(ENV_CATALOGUE_URL) or CatalogueConfig().url


def open_session(url: str | None = None, upgrade: bool = True) -> sessionmaker[Session]:
    """A session factory for the catalogue at ``url`` (default :func:`default_url`), migrated to head first
    unless ``upgrade=False``."""
    url = url or default_url()
    if upgrade:
        upgrade_to_head(url)
    elif current_revision(url) != head_revision():
        raise RuntimeError(f"catalogue {safe_url(url)} is not at "
                           f"migration {head_revision()}; run upgrade_to_head")
    return sessionmaker(make_engine(url), expire_on_commit=False)
