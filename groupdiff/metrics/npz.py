"""Sample batches as ADM-compatible ``.npz`` files.

Layout (the guided-diffusion / ADM evaluator format): ``arr_0`` uint8 images NHWC (N, H, W, C) with
C in {1, 3}; ``arr_1`` int64 labels (N,) as ADM's sampling script writes them, also stored under the
readable name ``labels``. Optional extra arrays (``s_cross``, ``group_ids``) ride along; readers that
only know ``arr_0`` ignore them. Reference batches may instead (or also) hold precomputed statistics
``mu``, ``sigma`` (pool3) and ``mu_s``, ``sigma_s`` (spatial), as ``VIRTUAL_imagenet256_labeled.npz``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..atomic import atomic_write

IMAGES_KEY = "arr_0"
LABELS_KEYS = ("labels", "arr_1")


@dataclass
class SampleBatch:
    """Images (uint8 NHWC), labels (or None) and any extra per-image arrays of a samples file."""

    images: np.ndarray
    labels: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def check_images(images: np.ndarray, where: str = "images") -> np.ndarray:
    """Validate uint8 NHWC with 1 or 3 channels; return the array (errors name what was seen)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{where}: expected uint8 pixels in [0, 255], got dtype {arr.dtype}; "
            "convert [-1, 1] floats with groupdiff.metrics.npz.to_uint8_nhwc"
        )
    if arr.ndim != 4:
        raise ValueError(f"{where}: expected a 4-D NHWC array (N, H, W, C), got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3):
        hint = " (this looks like NCHW: transpose(0, 2, 3, 1))" if arr.shape[1] in (1, 3) else ""
        raise ValueError(f"{where}: expected NHWC with C in (1, 3), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: holds no images")
    return arr


def write_samples_npz(path: str | Path, batch: SampleBatch) -> Path:
    """Write ``batch`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    images = check_images(batch.images, str(path))
    arrays: dict[str, np.ndarray] = {IMAGES_KEY: images}
    if batch.labels is not None:
        labels = np.asarray(batch.labels, dtype=np.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{path}: labels shape {labels.shape} does not match {images.shape[0]} images")
        arrays["arr_1"] = labels
        arrays["labels"] = labels
    for key, value in batch.extras.items():
        if key in arrays:
            raise ValueError(f"{path}: extra array name {key!r} is reserved")
        arrays[key] = np.asarray(value)
    with atomic_write(path) as f:  # a temporary per writer: ranks may race
        savez_reproducible(f, arrays)
    return path


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: the same arrays give the same file bytes


def savez_reproducible(path: str | Path | IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` (uncompressed, readable by ``np.load``) with fixed member timestamps, so equal arrays in
    the same order give byte-identical files (``np.savez`` stamps each member with the current time)."""
    import zipfile

    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o600 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def read_samples_npz(path: str | Path) -> SampleBatch:
    """Read and validate a samples ``.npz`` (see the module docstring for the layout)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {str(path)!r} does not exist")
    import zipfile

    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:  # not a zip of .npy arrays (or a bare .npy)
        raise ValueError(f"{path} is not a samples .npz: expected a zip of .npy arrays with {IMAGES_KEY!r} (uint8 "
                         f"N x H x W x C) and labels ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not hasattr(data, "files"):
        raise ValueError(f"{path} is a single .npy array, not a samples .npz with {IMAGES_KEY!r} and labels")
    with data:
        if IMAGES_KEY not in data.files:
            raise ValueError(f"{path}: no {IMAGES_KEY!r} array (found {sorted(data.files)}); expected ADM layout")
        images = check_images(data[IMAGES_KEY], str(path))
        labels = next((np.asarray(data[k]) for k in LABELS_KEYS if k in data.files), None)
        extras = {k: data[k] for k in data.files if k not in (IMAGES_KEY, *LABELS_KEYS)}
    return SampleBatch(images=images, labels=labels, extras=extras)


def to_uint8_nhwc(x) -> np.ndarray:
    """Model-range images ((N, C, H, W) in [-1, 1]) -> uint8 NHWC: ``clamp(127.5 x + 128, 0, 255)``, truncated.

    This is the SiT / REPA ``sample_ddp.py`` conversion (round-half-up of ``127.5 (x + 1)``).
    """
    import torch

    t = torch.as_tensor(x).detach().float().cpu()
    if t.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(t.shape)}")
    t = (127.5 * t + 128.0).clamp(0, 255).to(torch.uint8)
    return t.permute(0, 2, 3, 1).contiguous().numpy()
