"""Embedding and mining configuration (owned by the grouping stage)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import Section


class EmbedConfig(Section):
    """How image embeddings are computed."""

    encoder: Literal["pixels", "classifier", "clip", "dinov2"] = Field("pixels", description="Image encoder.")
    batch_size: int = Field(256, ge=1, le=65_536, description="Images per encoder batch.")


class MineConfig(Section):
    """How groups are mined from embeddings."""

    mode: Literal["similarity", "class", "random"] = Field("similarity", description="Grouping rule.")
    top_k: int = Field(100, ge=1, le=10_000, description="Candidates retrieved per anchor.")
    tau: float = Field(0.7, ge=-1.0, le=1.0, description="Cosine similarity threshold for a candidate to count.")
    group_size: int = Field(4, ge=1, le=256, description="Images per group N.")
