"""SQLAlchemy 2 tables of the catalogue: what was produced, from what, with which config (DESIGN 2.3).

Lineage runs dataset -> embedding set -> group table -> checkpoint (-> parent checkpoint when resumed)
-> evaluation -> model version; auxiliary weights (the built-in classifier) have their own rows. Every artefact row carries its content digest (unique), its URI in the
object store and the config that made it (JSON). The schema is created by the Alembic migrations in
``registry/migrations``; keep the two in step (a test compares them).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

DIGEST_LEN = 128
URI_LEN = 1024
NAME_LEN = 256
KIND_LEN = 32


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the catalogue."""


class _Artefact:
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), unique=True, index=True)
    uri: Mapped[str] = mapped_column(String(URI_LEN))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Dataset(_Artefact, Base):
    """A dataset snapshot (e.g. Fashion-MNIST train split at 32 px), or a numbered **version** of a named dataset
    written by ``groupdiff ingest`` (``version`` 1, 2, ... per ``name``; ``parent`` = the version before it;
    ``source``, ``counts`` per class and ``kind`` from the ingest report). Snapshots recorded by the pipeline
    from a path or the built-in data have no version."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_datasets_name_version"),)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    kind: Mapped[str | None] = mapped_column(String(KIND_LEN), nullable=True)
    parent: Mapped["Dataset | None"] = relationship(remote_side="Dataset.id")


class EmbeddingSet(_Artefact, Base):
    """Image embeddings of a dataset by one encoder."""

    __tablename__ = "embedding_sets"
    encoder: Mapped[str] = mapped_column(String(NAME_LEN))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    dataset: Mapped[Dataset] = relationship()


class GroupTable(_Artefact, Base):
    """Mined groups (neighbour indices) over an embedding set."""

    __tablename__ = "group_tables"
    embedding_set_id: Mapped[int] = mapped_column(ForeignKey("embedding_sets.id"), index=True)
    embedding_set: Mapped[EmbeddingSet] = relationship()


class Checkpoint(_Artefact, Base):
    """Model weights at a training step; ``parent`` is the checkpoint a resumed run started from."""

    __tablename__ = "checkpoints"
    run_id: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    step: Mapped[int] = mapped_column(Integer)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    group_table_id: Mapped[int | None] = mapped_column(ForeignKey("group_tables.id"), nullable=True, index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"), nullable=True)
    dataset: Mapped[Dataset] = relationship()
    group_table: Mapped[GroupTable | None] = relationship()
    parent: Mapped["Checkpoint | None"] = relationship(remote_side="Checkpoint.id")


class Evaluation(_Artefact, Base):
    """A score of a checkpoint under an evaluation protocol (``uri`` = the samples file)."""

    __tablename__ = "evaluations"
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    protocol_id: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    metric: Mapped[str] = mapped_column(String(NAME_LEN))
    value: Mapped[float] = mapped_column(Float)
    checkpoint: Mapped[Checkpoint] = relationship()


class Weights(_Artefact, Base):
    """Weights a stage trained or loaded besides the diffusion model, stored under ``weights/``: the built-in
    classifier (``name`` 'classifier'), whose features are the fd_fmnist space of every evaluation and the
    embeddings of the 'classifier' encoder."""

    __tablename__ = "weights"
    name: Mapped[str] = mapped_column(String(NAME_LEN), index=True)


class ModelVersion(Base):
    """A registered model version (MLflow registry) and the checkpoint/evaluation behind it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    version: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(URI_LEN))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    checkpoint: Mapped[Checkpoint] = relationship()
    evaluation: Mapped[Evaluation | None] = relationship()
