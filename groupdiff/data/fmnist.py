"""The built-in dataset: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

The package installs gzipped IDX files under ``/usr/share/datasets/fashion-mnist``; we parse them
directly (a 16-byte/8-byte big-endian header followed by uint8 pixels/labels) and pad the 28x28 images
to the preset's resolution. Pixels are scaled to [-1, 1], the range the diffusion model trains on.
"""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "GROUPDIFF_FMNIST_DIR"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def find_fmnist_dir() -> Path:
    """Folder holding the IDX files: ``$GROUPDIFF_FMNIST_DIR``, the package's folder, or what dpkg lists."""
    candidates = [Path(os.environ[ENV_DIR])] if os.environ.get(ENV_DIR) else []
    candidates.append(DEFAULT_DIR)
    try:
        listed = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=False).stdout
        candidates += [Path(p).parent for p in listed.splitlines() if p.endswith(_FILES["train"][0])]
    except FileNotFoundError:
        pass
    for folder in candidates:
        if (folder / _FILES["train"][0]).exists():
            return folder
    raise FileNotFoundError(
        f"Fashion-MNIST not found (looked in {[str(c) for c in candidates]}). Install it with: "
        f"sudo apt-get update && sudo apt-get install -y {PACKAGE}  (or set {ENV_DIR} to a folder of IDX files)"
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse a (gzipped) IDX file into a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {zero:#x} {dtype_code:#x})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header promises shape {shape} but holds {array.size} values")
    return array.reshape(shape)


def load_fmnist_uint8(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Raw images (N, 28, 28) uint8 and labels (N,) int64 of a split ('train' or 'test')."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(_FILES)}")
    folder = find_fmnist_dir()
    images = read_idx(folder / _FILES[split][0])
    labels = read_idx(folder / _FILES[split][1]).astype(np.int64)
    return images, labels


def to_model_range(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, S, S) in [-1, 1]: zero-padded (black) when S >= H, else resized."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div(127.5).sub(1.0).unsqueeze(1)  # copy: IDX buffers are read-only
    h = x.shape[-1]
    if image_size >= h:
        pad = image_size - h
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)
    else:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x


def load_fmnist(split: str = "train", image_size: int = 32, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, S, S) in [-1, 1] and labels (N,) of the built-in data; ``limit`` > 0 keeps the first N."""
    images, labels = load_fmnist_uint8(split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return to_model_range(images, image_size), torch.from_numpy(labels)
