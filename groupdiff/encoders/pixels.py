"""``pixels`` encoder: flattened pixels, centred on the data mean, optionally PCA-reduced (scikit-learn PCA).

Centring matters for cosine similarity: built-in images share a large constant background (-1 after
padding), which makes raw pixel vectors of unrelated images look alike (cosine ~0.9). Both the mean and
the PCA are fitted on a seeded sample of the dataset.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.decomposition import PCA

from ..data.digest import digest_arrays


class PixelEncoder:
    """Flatten images, subtract ``mean`` (if given), project onto ``pca``'s components (if given)."""

    name = "pixels"

    def __init__(self, mean: np.ndarray | None = None, pca: PCA | None = None):
        self.mean = None if mean is None else torch.from_numpy(np.asarray(mean, dtype=np.float32))
        self.pca = pca
        parts = [] if mean is None else [np.asarray(mean, dtype=np.float32)]
        if pca is not None:
            parts += [pca.components_.astype(np.float32), pca.mean_.astype(np.float32)]
        self.digest = digest_arrays(*parts) if parts else "raw"

    @classmethod
    def create(cls, pca_dim: int, fit_images: Callable[[], torch.Tensor] | None, seed: int = 0,
               center: bool = False) -> "PixelEncoder":
        """Raw pixels, or centred on / PCA-fitted on ``fit_images()`` (``center``, ``pca_dim`` > 0)."""
        if not pca_dim and not center:
            return cls()
        if fit_images is None:
            raise ValueError("pixels encoder with centring or pca_dim > 0 needs images to fit on")
        x = fit_images().flatten(1).double().numpy()
        if not pca_dim:
            return cls(mean=x.mean(axis=0))
        if pca_dim > min(x.shape):
            raise ValueError(f"embed.pca_dim={pca_dim} exceeds min(fit images={x.shape[0]}, pixels={x.shape[1]})")
        return cls(pca=PCA(n_components=pca_dim, svd_solver="full", random_state=seed).fit(x))  # PCA centres itself

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C*H*W) (centred) pixels or (B, pca_dim) PCA coefficients."""
        x = images.detach().float().flatten(1).cpu()
        if self.mean is not None:
            x = x - self.mean
        if self.pca is None:
            return x
        return torch.from_numpy(self.pca.transform(x.double().numpy()).astype(np.float32))
