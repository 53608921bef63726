"""The ``encode-latents`` stage: encode the image dataset ``config.data`` names with its SD-VAE into latent
shards. Kept apart from :mod:`groupdiff.data.latents` (the encoder and the dataset reading the shards) because
it builds its input through :func:`~groupdiff.data.datasets.build_dataset`, which itself builds latent
datasets: the arrows point one way, stage -> datasets -> latents."""
from __future__ import annotations

from pathlib import Path

import torch

from .datasets import build_dataset
from .latents import encode_latents
from .shards import ShardStageResult


def run_encode_latents(config, out_dir: str | Path, rank: int = 0, world_size: int = 1) -> ShardStageResult:
    """Stage entry: encode ``config.data``'s image dataset (a GroupDiffConfig) with ``config.data.vae``."""
    if config.data.dataset == "latents":
        raise ValueError("data.dataset='latents' is already encoded; point data at the image folder to encode")
    device = config.data.vae.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = build_dataset(config.data)
    result = encode_latents(dataset, config.data.vae, out_dir, rank, world_size, device,
                            num_workers=config.data.num_workers)
    result["dataset_report"] = dataset.report()
    return result
