"""Embedding and mining configuration (owned by the grouping stage)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config_base import Section
from ..encoders.config import ClassifierConfig


class EmbedConfig(Section):
    """How image embeddings are computed (DESIGN 1.5)."""

    encoder: Literal["pixels", "classifier", "clip", "dinov2"] = Field("pixels", description="Image encoder.")
    batch_size: int = Field(256, ge=1, le=65_536, description="Images per encoder batch.")
    shard_size: int = Field(10_000, ge=1, le=10_000_000, description="Images per embedding shard file (the restart unit).")
    weights: str = Field("", description="Local weights file of the classifier/clip/dinov2 encoder (never downloaded).")
    clip_arch: str = Field("ViT-L-14", description="open_clip architecture name (e.g. ViT-B-32, ViT-L-14).")
    clip_config: str = Field("", description="Optional open_clip model-config JSON registering a custom architecture named by its file stem.")
    dinov2_arch: str = Field("vit_base_patch14_dinov2", description="timm DINOv2 architecture name.")
    dinov2_model_args: dict[str, int | float | str] = Field(
        default_factory=lambda: {"img_size": 224},
        description="Extra timm.create_model arguments (img_size: input side; position embeddings are resampled).",
    )
    pca_dim: int = Field(0, ge=0, le=65_536, description="pixels encoder: PCA components (0 = raw flattened pixels).")
    pixel_center: bool = Field(True, description="pixels encoder: subtract the data mean (fitted on the sample) so cosine reflects content, not the shared background.")
    pca_fit_items: int = Field(10_000, ge=1, le=10_000_000, description="pixels encoder: images (seeded sample) the mean / PCA are fitted on.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the encoder runs (auto = cuda when available).")
    seed: int = Field(0, ge=0, description="Seed for the PCA fitting sample.")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="The built-in classifier (train-classifier stage).")


class MineConfig(Section):
    """How groups are mined from embeddings (DESIGN 1.5)."""

    mode: Literal["similarity", "class", "random"] = Field("similarity", description="Grouping rule.")
    top_k: int = Field(100, ge=1, le=10_000, description="Candidates retrieved per anchor.")
    tau: float = Field(0.7, ge=-1.0, le=1.0, description="Cosine similarity threshold for a candidate to count.")
    group_size: int = Field(4, ge=1, le=256, description="Images per group N.")
    draw: Literal["random", "first"] = Field(
        "random", description="Static groups: a seeded random draw of N-1 passing candidates (paper) or the best N-1 "
        "(the epoch plan applies the released 'first N-1 not used this epoch' rule to the same candidates).",
    )
    fill: Literal["class", "random", "drop"] = Field(
        "random", description="When fewer than N-1 candidates pass tau: add same-class items, random items, or drop the anchor "
        "(it never anchors a group). Filled members are counted.",
    )
    index: Literal["flat", "ivf", "ivfpq", "hnsw"] = Field("flat", description="faiss inner-product index (flat = exact).")
    nlist: int = Field(0, ge=0, le=1_000_000, description="IVF lists (0 = 4*sqrt(items)).")
    nprobe: int = Field(32, ge=1, le=1_000_000, description="IVF lists visited per query.")
    pq_m: int = Field(16, ge=1, le=512, description="IVF-PQ sub-quantizers (must divide the dimension).")
    pq_bits: int = Field(8, ge=1, le=16, description="IVF-PQ bits per sub-quantizer code.")
    hnsw_m: int = Field(32, ge=2, le=512, description="HNSW neighbours per node.")
    ef_construction: int = Field(80, ge=1, le=100_000, description="HNSW build-time beam width.")
    ef_search: int = Field(48, ge=1, le=100_000, description="HNSW search-time beam width (faiss uses max(ef_search, k)).")
    recall_sample: int = Field(1000, ge=0, le=1_000_000, description="Queries used to measure recall@k against exact search (0 = skip).")
    query_batch: int = Field(4096, ge=1, le=1_000_000, description="Queries per index search call.")
    use_gpu: Literal["auto", "never"] = Field("auto", description="auto: GPU index when faiss.get_num_gpus() > 0.")
    seed: int = Field(0, ge=0, description="Seed for random draws, class/random modes and the recall sample.")

    @model_validator(mode="after")
    def _check(self) -> "MineConfig":
        if self.group_size - 1 > self.top_k:
            raise ValueError(f"mine.group_size-1={self.group_size - 1} is larger than mine.top_k={self.top_k}: "
                             f"raise top_k or lower group_size")
        return self
