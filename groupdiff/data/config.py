"""Dataset configuration (owned by the data/grouping stage)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config_base import Section


class VaeConfig(Section):
    """The SD-VAE (diffusers ``AutoencoderKL``) used to pre-encode images into latents."""

    weights: str = Field(
        "", description="Local path to the VAE weights: a diffusers folder (config.json + weights) or one "
        ".safetensors/.bin/.pt state-dict file for the SD-VAE architecture. Empty = not configured.",
    )
    config_json: str = Field(
        "", description="Optional AutoencoderKL config JSON for a single weights file (default: the SD-VAE config built in).",
    )
    scaling_factor: float = Field(0.18215, gt=0.0, le=10.0, description="Latents are stored as mean * scaling_factor (SD-VAE value).")
    sample: bool = Field(False, description="Store a posterior sample instead of the posterior mean.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per VAE encode batch.")
    shard_size: int = Field(10_000, ge=1, le=10_000_000, description="Images per latent shard file.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Dtype the VAE runs in.")
    seed: int = Field(0, ge=0, description="Seed of posterior samples (per shard: seed + shard number, so restarts agree).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the VAE runs (auto = cuda when available).")


class IngestConfig(Section):
    """How ``groupdiff ingest`` turns an image folder (or a tar of class folders) into a dataset version."""

    image_size: int = Field(32, ge=8, le=1024, description="Side every image is centre-cropped to (ADM crop).")
    on_corrupt: Literal["skip", "fail"] = Field(
        "fail", description="A corrupt or non-image file: skip it (listed in the report and the manifest) or fail "
        "naming every such file before anything is written.",
    )
    encode: Literal["pixels", "latents"] = Field(
        "pixels", description="Store preprocessed pixels (uint8), or SD-VAE latents encoded with data.vae.",
    )
    shard_size: int = Field(2048, ge=1, le=10_000_000, description="Items per shard file.")
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes decoding the images.")


class DataConfig(Section):
    """Which images to train on."""

    dataset: Literal["fmnist", "imagefolder", "latents"] = Field(
        "fmnist", description="fmnist: built-in Fashion-MNIST (Debian package dataset-fashion-mnist); "
        "imagefolder: an ImageNet-layout folder (root/<class>/<image>) or a pixel version written by "
        "`groupdiff ingest`; latents: shards written by `groupdiff encode-latents` or a latent version written by "
        "`groupdiff ingest` (root = their folder or s3:// prefix).",
    )
    root: str = Field(
        "", description="Folder or s3://bucket/prefix of the imagefolder/latents dataset (unused for fmnist).",
    )
    split: Literal["train", "test"] = Field("train", description="Dataset split (fmnist).")
    image_size: int = Field(32, ge=8, le=1024, description="Side the images are padded/resized/centre-cropped to.")
    limit: int = Field(0, ge=0, description="Use only the first N images (0 = all).")
    skip_corrupt: bool = Field(
        False, description="imagefolder: skip unreadable images (counted and listed) instead of failing on the first one.",
    )
    digest_mode: Literal["content", "listing"] = Field(
        "content", description="imagefolder digest: hash every file's bytes (content) or only relative paths and sizes (listing, fast).",
    )
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes for reading images.")
    prefetch_factor: int = Field(
        2, ge=1, le=64, description="Batches each DataLoader worker reads ahead (training; used when num_workers > 0).",
    )
    cache_dir: str = Field(
        "", description="Local folder for shards fetched from the object store (default ~/.cache/groupdiff/shards); "
        "shards are kept by content digest and shared by the workers and ranks of one machine.",
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="How `groupdiff ingest` builds versions.")
    vae: VaeConfig = Field(default_factory=VaeConfig, description="VAE for the latent encode stage.")

    @model_validator(mode="after")
    def _check_root(self) -> "DataConfig":
        if self.dataset in ("imagefolder", "latents") and not self.root:
            raise ValueError(f"data.dataset={self.dataset!r} needs data.root (a folder path)")
        return self
