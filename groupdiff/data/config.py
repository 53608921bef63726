"""Dataset configuration (owned by the data/grouping stage)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import Section


class DataConfig(Section):
    """Which images to train on."""

    dataset: Literal["fmnist"] = Field("fmnist", description="Built-in Fashion-MNIST (Debian package dataset-fashion-mnist).")
    split: Literal["train", "test"] = Field("train", description="Dataset split.")
    image_size: int = Field(32, ge=8, le=1024, description="Side the images are padded/resized to.")
    limit: int = Field(0, ge=0, description="Use only the first N images (0 = all).")
