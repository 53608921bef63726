"""The ``model`` config section, owned by the model package (composed in :mod:`groupdiff.config`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config_base import Section


class ModelConfig(Section):
    """The SiT backbone with group attention (DESIGN 1.1-1.2)."""

    name: str = Field(
        "SiT-S/2",
        description="Architecture: an official name from groupdiff.models.SiT_models (e.g. 'SiT-XL/2') "
        "or 'custom' to use depth/hidden_size/num_heads/patch_size below.",
    )
    depth: int = Field(4, ge=1, le=64, description="Transformer blocks (only for name='custom').")
    hidden_size: int = Field(128, ge=16, le=4096, description="Token width (only for name='custom').")
    num_heads: int = Field(4, ge=1, le=64, description="Attention heads (only for name='custom').")
    patch_size: int = Field(4, ge=1, le=16, description="Patch side in pixels/latents (only for name='custom').")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="MLP hidden width as a multiple of hidden_size.")
    input_size: int = Field(32, ge=2, le=512, description="Side of the (latent) image the model sees.")
    in_channels: int = Field(4, ge=1, le=64, description="Channels of the (latent) image: 4 for SD-VAE latents.")
    num_classes: int = Field(1000, ge=1, le=100_000, description="Number of class labels; one extra null row is added for CFG.")
    class_dropout_prob: float = Field(0.1, ge=0.0, le=1.0, description="Probability of replacing a group's label by null during training (CFG).")
    learn_sigma: bool = Field(True, description="Official SiT layout: output 2*in_channels (second half unused by the ODE/SDE samplers).")
    max_group_size: int = Field(16, ge=1, le=256, description="Rows of the sample-index embedding table; largest group N allowed.")
    time_convention: Literal["noise_at_1", "noise_at_0"] = Field(
        "noise_at_1",
        description="Convention the weights were trained in: 'noise_at_1' (GroupDiff/REPA, ours) or "
        "'noise_at_0' (official SiT checkpoints). The model converts at its boundary.",
    )

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelConfig":
        if self.name == "custom" and self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}"
            )
        if self.name == "custom" and self.input_size % self.patch_size != 0:
            raise ValueError(
                f"model.input_size={self.input_size} is not divisible by model.patch_size={self.patch_size}"
            )
        return self
