"""The SQL catalogue (SQLAlchemy 2 + Alembic): datasets, embedding sets, group tables, checkpoints,
evaluations, model versions and auxiliary weights with their digests, URIs, configs and lineage — queryable
without MLflow."""
from .db import check_url, current_revision, downgrade, head_revision, make_engine, open_session, upgrade_to_head
from .models import Base, Checkpoint, Dataset, EmbeddingSet, Evaluation, GroupTable, ModelVersion, Weights
from .records import (
    Lineage, checkpoints_using_groups, lineage_of_model_version, record_checkpoint, record_dataset,
    record_embedding_set, record_evaluation, record_group_table, record_model_version, record_weights,
)

__all__ = [
    "Base", "Checkpoint", "Dataset", "EmbeddingSet", "Evaluation", "GroupTable", "Lineage", "ModelVersion", "Weights",
    "check_url", "checkpoints_using_groups", "current_revision", "downgrade", "head_revision",
    "lineage_of_model_version", "make_engine", "open_session", "record_checkpoint", "record_dataset",
    "record_embedding_set", "record_evaluation", "record_group_table", "record_model_version", "record_weights",
    "upgrade_to_head",
]
