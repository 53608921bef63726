"""The encoder an ``EmbedConfig`` names. Kept apart from :mod:`groupdiff.encoders.base` (the interface and
shared transforms the encoders import) so that the arrows point one way: factory -> encoders -> base."""
from __future__ import annotations

import torch

from .base import Encoder, offline


def build_encoder(config, device: str | torch.device = "cpu", fit_images=None) -> Encoder:
    """The encoder ``config`` (an EmbedConfig) names; ``fit_images`` (a callable returning a tensor) feeds PCA."""
    if config.encoder == "pixels":
        from .pixels import PixelEncoder

        return PixelEncoder.create(config.pca_dim, fit_images, seed=config.seed, center=config.pixel_center)
    if config.encoder == "classifier":
        from .classifier import ClassifierEncoder

        return ClassifierEncoder.load(config.weights, device)
    offline()
    if config.encoder == "clip":
        from .clip import ClipEncoder

        return ClipEncoder.load(config.clip_arch, config.weights, device, config.clip_config)
    if config.encoder == "dinov2":
        from .dinov2 import Dinov2Encoder

        return Dinov2Encoder.load(config.dinov2_arch, config.weights, device, dict(config.dinov2_model_args))
    raise ValueError(f"unknown encoder {config.encoder!r}; expected pixels, classifier, clip or dinov2")
