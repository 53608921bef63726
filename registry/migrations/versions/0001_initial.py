"""Initial catalogue: datasets, embedding sets, group tables, checkpoints, evaluations, model versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DIGEST, URI, NAME = 128, 1024, 256


def _artefact_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(DIGEST), nullable=False),
        sa.Column("uri", sa.String(URI), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _digest_index(table: str) -> None:
    op.create_index(f"ix_{table}_digest", table, ["digest"], unique=True)


def upgrade() -> None:
    op.create_table("datasets", *_artefact_columns(), sa.Column("name", sa.String(NAME), nullable=False))
    _digest_index("datasets")
    op.create_table(
        "embedding_sets", *_artefact_columns(),
        sa.Column("encoder", sa.String(NAME), nullable=False),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), nullable=False),
    )
    _digest_index("embedding_sets")
    op.create_index("ix_embedding_sets_dataset_id", "embedding_sets", ["dataset_id"])
    op.create_table(
        "group_tables", *_artefact_columns(),
        sa.Column("embedding_set_id", sa.Integer(), sa.ForeignKey("embedding_sets.id"), nullable=False),
    )
    _digest_index("group_tables")
    op.create_index("ix_group_tables_embedding_set_id", "group_tables", ["embedding_set_id"])
    op.create_table(
        "checkpoints", *_artefact_columns(),
        sa.Column("run_id", sa.String(NAME), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("group_table_id", sa.Integer(), sa.ForeignKey("group_tables.id"), nullable=True),
        sa.Column("parent_id", sa.Integer(), sa.ForeignKey("checkpoints.id"), nullable=True),
    )
    _digest_index("checkpoints")
    op.create_index("ix_checkpoints_run_id", "checkpoints", ["run_id"])
    op.create_index("ix_checkpoints_dataset_id", "checkpoints", ["dataset_id"])
    op.create_index("ix_checkpoints_group_table_id", "checkpoints", ["group_table_id"])
    op.create_table(
        "evaluations", *_artefact_columns(),
        sa.Column("checkpoint_id", sa.Integer(), sa.ForeignKey("checkpoints.id"), nullable=False),
        sa.Column("protocol_id", sa.String(NAME), nullable=False),
        sa.Column("metric", sa.String(NAME), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
    )
    _digest_index("evaluations")
    op.create_index("ix_evaluations_checkpoint_id", "evaluations", ["checkpoint_id"])
    op.create_index("ix_evaluations_protocol_id", "evaluations", ["protocol_id"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(NAME), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(URI), nullable=False),
        sa.Column("mlflow_run_id", sa.String(NAME), nullable=True),
        sa.Column("checkpoint_id", sa.Integer(), sa.ForeignKey("checkpoints.id"), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), sa.ForeignKey("evaluations.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
    )
    op.create_index("ix_model_versions_name", "model_versions", ["name"])
    op.create_index("ix_model_versions_checkpoint_id", "model_versions", ["checkpoint_id"])


def downgrade() -> None:
    for table in ("model_versions", "evaluations", "checkpoints", "group_tables", "embedding_sets", "datasets"):
        op.drop_table(table)
