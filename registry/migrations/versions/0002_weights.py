"""Auxiliary weights: the built-in classifier (fd_fmnist feature space, 'classifier' encoder) as a row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DIGEST, URI, NAME = 128, 1024, 256


def upgrade() -> None:
    op.create_table(
        "weights",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(DIGEST), nullable=False),
        sa.Column("uri", sa.String(URI), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(NAME), nullable=False),
    )
    op.create_index("ix_weights_digest", "weights", ["digest"], unique=True)
    op.create_index("ix_weights_name", "weights", ["name"])


def downgrade() -> None:
    op.drop_table("weights")
