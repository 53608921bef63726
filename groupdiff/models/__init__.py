"""SiT / GroupDiff models: ``SiT_models`` maps official names ("SiT-XL/2", ...) to constructors."""
from __future__ import annotations

from .config import ModelConfig
from .checkpoint import LoadReport, load_official_state_dict, official_state_dict, read_state_dict
from .sit import SiT, SiT_models, count_parameters, flops_per_image

__all__ = [
    "SiT", "SiT_models", "build_model", "count_parameters", "flops_per_image",
    "LoadReport", "load_official_state_dict", "official_state_dict", "read_state_dict",
]


def build_model(config: ModelConfig) -> SiT:
    """Construct the model a :class:`ModelConfig` describes (an official name or ``custom`` sizes)."""
    common = dict(
        input_size=config.input_size,
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        class_dropout_prob=config.class_dropout_prob,
        learn_sigma=config.learn_sigma,
        max_group_size=config.max_group_size,
        mlp_ratio=config.mlp_ratio,
        time_convention=config.time_convention,
    )
    if config.name == "custom":
        return SiT(depth=config.depth, hidden_size=config.hidden_size, num_heads=config.num_heads,
                   patch_size=config.patch_size, **common)
    if config.name not in SiT_models:
        raise ValueError(f"unknown model name {config.name!r}; expected 'custom' or one of {sorted(SiT_models)}")
    return SiT_models[config.name](**common)
