"""Dataset versions: ``datasets`` rows numbered per name (``groupdiff ingest``), with parent, source, counts, kind.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-12
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KIND = 32
PARENT_FK = "fk_datasets_parent_id_datasets"
UNIQUE = "uq_datasets_name_version"


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table (it cannot add a constraint in place); PostgreSQL alters it
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("source", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("counts", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(KIND), nullable=True))
        batch.create_foreign_key(PARENT_FK, "datasets", ["parent_id"], ["id"])
        batch.create_unique_constraint(UNIQUE, ["name", "version"])


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(UNIQUE, type_="unique")
        batch.drop_constraint(PARENT_FK, type_="foreignkey")
        for column in ("kind", "counts", "source", "parent_id", "version"):
            batch.drop_column(column)
