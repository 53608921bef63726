"""Writing and querying the catalogue: idempotent ``record_*`` (get-or-create by digest) and lineage."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Checkpoint, Dataset, EmbeddingSet, Evaluation, GroupTable, ModelVersion, Weights

A = TypeVar("A", Dataset, EmbeddingSet, GroupTable, Checkpoint, Evaluation, Weights)


def _get_or_create(session: Session, cls: type[A], digest: str, **fields: Any) -> A:
    """The row of ``cls`` with ``digest``; created from ``fields`` if absent. A digest already recorded with
    a different URI is an error (the same content cannot live at two places under one record)."""
    if not digest:
        raise ValueError(f"{cls.__name__} needs a non-empty digest")
    row = session.scalar(select(cls).where(cls.digest == digest))
    if row is None:
        row = _insert_once(session, cls, digest, fields)
    if row.uri != fields["uri"]:
        raise ValueError(
            f"{cls.__name__} digest {digest!r} is already recorded at {row.uri!r}, not {fields['uri']!r}"
        )
    return row


def _insert_once(session: Session, cls: type[A], digest: str, fields: dict[str, Any]) -> A:
    """Insert the row; when another writer inserted the same digest since our look (two flow runs recording one
    step at once: both saw none), return theirs. On PostgreSQL the insert runs in a savepoint, so the conflict
    leaves the caller's transaction usable; SQLite makes the second writer wait for the first one's commit with
    its database lock instead (and pysqlite's savepoints are unreliable), so it inserts plainly."""
    if session.get_bind().dialect.name == "sqlite":
        row = cls(digest=digest, **fields)
        session.add(row)
        session.flush()
        return row
    try:
        with session.begin_nested():
            row = cls(digest=digest, **fields)
            session.add(row)
        return row
    except IntegrityError:
        row = session.scalar(select(cls).where(cls.digest == digest))
        if row is None:
            raise
        return row


def record_dataset(session: Session, name: str, digest: str, uri: str, config: dict | None = None) -> Dataset:
    """Record a dataset snapshot."""
    return _get_or_create(session, Dataset, digest, name=name, uri=uri, config=config or {})


def record_embedding_set(session: Session, dataset: Dataset, encoder: str, digest: str, uri: str,
                         config: dict | None = None) -> EmbeddingSet:
    """Record embeddings of ``dataset`` by ``encoder``."""
    return _get_or_create(session, EmbeddingSet, digest, dataset=dataset, encoder=encoder, uri=uri,
                          config=config or {})


def record_group_table(session: Session, embedding_set: EmbeddingSet, digest: str, uri: str,
                       config: dict | None = None) -> GroupTable:
    """Record groups mined over ``embedding_set``."""
    return _get_or_create(session, GroupTable, digest, embedding_set=embedding_set, uri=uri, config=config or {})


def record_checkpoint(session: Session, run_id: str, step: int, digest: str, uri: str, dataset: Dataset,
                      group_table: GroupTable | None = None, parent: Checkpoint | None = None,
                      config: dict | None = None) -> Checkpoint:
    """Record a checkpoint (``group_table`` None for the baseline, ``parent`` when resumed)."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return _get_or_create(session, Checkpoint, digest, run_id=run_id, step=step, uri=uri, dataset=dataset,
                          group_table=group_table, parent=parent, config=config or {})


def record_evaluation(session: Session, checkpoint: Checkpoint, protocol_id: str, metric: str, value: float,
                      digest: str, uri: str, config: dict | None = None) -> Evaluation:
    """Record a score of ``checkpoint`` under ``protocol_id`` (``uri`` = its samples)."""
    return _get_or_create(session, Evaluation, digest, checkpoint=checkpoint, protocol_id=protocol_id,
                          metric=metric, value=float(value), uri=uri, config=config or {})


def record_weights(session: Session, name: str, digest: str, uri: str, config: dict | None = None) -> Weights:
    """Record auxiliary weights (e.g. the built-in classifier, ``name`` 'classifier') stored at ``uri``."""
    if not name:
        raise ValueError(f"weights need a non-empty name (digest {digest!r}, uri {uri!r})")
    return _get_or_create(session, Weights, digest, name=name, uri=uri, config=config or {})


def record_model_version(session: Session, name: str, version: int, uri: str, checkpoint: Checkpoint,
                         evaluation: Evaluation | None = None, mlflow_run_id: str | None = None) -> ModelVersion:
    """Record a registered model version (idempotent on ``(name, version)``)."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if row is None:
        row = ModelVersion(name=name, version=version, uri=uri, checkpoint=checkpoint, evaluation=evaluation,
                           mlflow_run_id=mlflow_run_id)
        session.add(row)
        session.flush()
    elif row.checkpoint_id != checkpoint.id:
        raise ValueError(f"model {name!r} version {version} is already recorded for checkpoint {row.checkpoint.uri!r}")
    return row


@dataclass
class Lineage:
    """Where a model version came from."""

    model_version: ModelVersion
    checkpoint: Checkpoint
    ancestors: list[Checkpoint] = field(default_factory=list)  # parent, grandparent, ... (resumed runs)
    group_table: GroupTable | None = None
    embedding_set: EmbeddingSet | None = None
    dataset: Dataset | None = None
    evaluations: list[Evaluation] = field(default_factory=list)


def lineage_of_model_version(session: Session, name: str, version: int) -> Lineage:
    """Which checkpoint, groups, embeddings and dataset produced model ``name`` version ``version``."""
    mv = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if mv is None:
        known = session.scalars(select(ModelVersion.version).where(ModelVersion.name == name)).all()
        raise KeyError(f"model {name!r} version {version} is not in the catalogue (recorded versions: {sorted(known)})")
    ckpt = mv.checkpoint
    ancestors, node, seen = [], ckpt.parent, {ckpt.id}
    while node is not None and node.id not in seen:
        ancestors.append(node)
        seen.add(node.id)
        node = node.parent
    groups = ckpt.group_table
    evaluations = list(session.scalars(
        select(Evaluation).where(Evaluation.checkpoint_id == ckpt.id).order_by(Evaluation.id)
    ))
    return Lineage(mv, ckpt, ancestors, groups, groups.embedding_set if groups else None, ckpt.dataset, evaluations)


def checkpoints_using_groups(session: Session, group_digest: str) -> list[Checkpoint]:
    """Every checkpoint trained on the group table with ``group_digest`` (oldest first)."""
    return list(session.scalars(
        select(Checkpoint).join(GroupTable, Checkpoint.group_table_id == GroupTable.id)
        .where(GroupTable.digest == group_digest).order_by(Checkpoint.id)
    ))
