"""Training configuration (owned by the training stage)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import Section


class TrainConfig(Section):
    """Training variant and optimisation."""

    variant: Literal["baseline", "groupdiff-l", "groupdiff-f"] = Field("baseline", description="Training recipe (DESIGN 1.3).")
    group_size: int = Field(4, ge=1, le=256, description="Images per group N for GroupDiff variants.")
    global_batch_images: int = Field(256, ge=1, le=1_000_000, description="Images per optimizer step across all ranks.")
