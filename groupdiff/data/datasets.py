"""One entry point for every dataset kind: :func:`build_dataset` from a :class:`DataConfig`.

Each dataset is a ``torch.utils.data.Dataset`` of ``(image (C, S, S) in [-1, 1] or latent, label)``
with attributes ``labels`` (int64 array), ``num_classes``, ``channels`` and ``digest`` (content digest,
including the transform, so artefacts computed from it can be keyed by it).
"""
from __future__ import annotations

import numpy as np
import torch

from .config import DataConfig
from .digest import digest_arrays
from .fmnist import CLASS_NAMES, load_fmnist_uint8, to_model_range
from .sharded import is_sharded


class TensorImageDataset(torch.utils.data.Dataset):
    """Images held in memory as one tensor (the built-in data)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, num_classes: int, digest: str):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = num_classes
        self.channels = images.shape[1]
        self.digest = digest

    def report(self) -> dict:
        """Counts for logging."""
        return {"images": len(self), "skipped": 0, "skipped_files": [], "converted": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one item."""
        return tuple(self.images.shape[1:])

    def fetch(self, indices: np.ndarray) -> torch.Tensor:
        """Items of ``indices`` as one tensor."""
        return self.images[torch.as_tensor(np.asarray(indices), dtype=torch.long)]


def item_shape(dataset) -> tuple[int, ...]:
    """Shape of one item of any dataset of :func:`build_dataset` (read from its first item if it does not say)."""
    shape = getattr(dataset, "item_shape", None)
    return tuple(shape) if shape is not None else tuple(dataset[0][0].shape)


def fetch_items(dataset, indices: np.ndarray) -> torch.Tensor:
    """Items of ``indices`` stacked (N, ...): the dataset's own batch read when it has one, else item by item."""
    fetch = getattr(dataset, "fetch", None)
    if fetch is not None:
        return fetch(indices)
    return torch.stack([dataset[int(i)][0] for i in indices]).float()


def fmnist_dataset(split: str, image_size: int, limit: int = 0) -> TensorImageDataset:
    """The built-in Fashion-MNIST split as a dataset with a digest of its bytes and transform."""
    raw, labels = load_fmnist_uint8(split)
    if limit:
        raw, labels = raw[:limit], labels[:limit]
    digest = digest_arrays(raw, labels, extra={"kind": "fmnist", "image_size": image_size, "transform": "pad-or-resize"})
    return TensorImageDataset(to_model_range(raw, image_size), labels, len(CLASS_NAMES), digest)


def build_dataset(config: DataConfig) -> torch.utils.data.Dataset:
    """The dataset ``config`` describes (fmnist, imagefolder or pre-encoded latents)."""
    if config.dataset == "fmnist":
        return fmnist_dataset(config.split, config.image_size, config.limit)
    if config.dataset in SHARD_KINDS and config.root and is_sharded(config.root):
        return _sharded(config)
    if config.dataset == "imagefolder":
        from .imagefolder import ImageFolderDataset

        return ImageFolderDataset(config.root, config.image_size, config.limit, config.skip_corrupt, config.digest_mode)
    if config.dataset == "latents":
        from .latents import LatentDataset

        return LatentDataset(config.root, config.limit)
    raise ValueError(f"unknown data.dataset {config.dataset!r}")


SHARD_KINDS = {"imagefolder": "pixels", "latents": "latents"}  # data.dataset -> the kind of version it reads


def _sharded(config: DataConfig):
    """A version written by ``groupdiff ingest`` (folder or ``s3://``), checked against ``data.dataset`` and
    ``data.image_size``."""
    from .sharded import ShardedDataset

    dataset = ShardedDataset(config.root, config.limit, config.cache_dir or None)
    expected = SHARD_KINDS[config.dataset]
    if dataset.kind != expected:
        other = next(k for k, v in SHARD_KINDS.items() if v == dataset.kind)
        raise ValueError(f"data.dataset={config.dataset!r} reads {expected}, but {config.root} holds {dataset.kind} "
                         f"(set data.dataset={other!r})")
    if dataset.kind == "pixels" and dataset.item_shape[-1] != config.image_size:
        raise ValueError(f"data.image_size={config.image_size} but {config.root} holds {dataset.item_shape[-1]} px "
                         f"images (ingested at that size); set data.image_size={dataset.item_shape[-1]}")
    return dataset
