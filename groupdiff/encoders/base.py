"""Encoder interface and the transforms every encoder shares (:func:`~groupdiff.encoders.factory.build_encoder` builds one).

An encoder maps a batch of images ``(B, C, H, W)`` in [-1, 1] to features ``(B, D)``; the embedding
stage L2-normalises them. Every encoder owns its preprocessing (channel repeat, resize, normalisation)
and has a ``digest`` naming its weights, so embedding artefacts can be keyed by (dataset, encoder).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch


class Encoder(Protocol):
    """What the embedding stage needs from an encoder."""

    name: str
    digest: str

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, D) of images (B, C, H, W) in [-1, 1]."""
        ...


def require_weights(path: str, what: str, hint: str) -> Path:
    """``path`` as a Path, or a clear error that says where to put the weights (nothing is downloaded)."""
    if not path:
        raise FileNotFoundError(f"{what}: no weights file configured. {hint}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: weights file {p} does not exist. {hint}")
    return p


def offline() -> None:
    """Forbid hub downloads for the rest of the process (weights load from local paths only)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def to_rgb01(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images with 1 or 3 channels -> 3-channel images in [0, 1]."""
    x = images.float().add(1.0).div(2.0).clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"expected images with 1 or 3 channels, got {x.shape[1]}")
    return x


def resize_normalise(images: torch.Tensor, size, mean, std) -> torch.Tensor:
    """RGB [0, 1] -> resized (bicubic, antialiased; images are square after the data transform) and normalised."""
    size = tuple(size)
    if tuple(images.shape[-2:]) != size:
        images = torch.nn.functional.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std
