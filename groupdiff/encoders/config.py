"""Configuration of the built-in classifier (trained by ``groupdiff train-classifier``)."""
from __future__ import annotations

from pydantic import Field

from ..config_base import Section


class ClassifierConfig(Section):
    """A small CNN trained on the built-in data: an embedding encoder and the evaluation feature space."""

    width: int = Field(32, ge=4, le=1024, description="Channels of the first conv stage (doubled per stage).")
    feature_dim: int = Field(128, ge=8, le=4096, description="Width of the penultimate layer (the feature vector).")
    epochs: int = Field(2, ge=1, le=1000, description="Training epochs over the train split.")
    batch_size: int = Field(128, ge=1, le=65_536, description="Images per training step.")
    lr: float = Field(2e-3, gt=0.0, le=1.0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="AdamW weight decay.")
    train_limit: int = Field(0, ge=0, description="Train on the first N images only (0 = all).")
    eval_limit: int = Field(0, ge=0, description="Evaluate on the first N test images only (0 = all).")
    seed: int = Field(0, ge=0, description="Seed for init and data order.")
