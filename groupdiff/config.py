"""Typed configuration: one source of truth for every number, composed here from the sections each package owns.

Each section is a pydantic model whose fields carry a description and bounds, so the same classes
validate YAML presets, CLI overrides and (in ``flows/``) render as Prefect UI forms. The packages own
their sections (``models/config.py``: model; ``transport/config.py``: transport, sampler; ``data/config.py``;
``grouping/config.py``: embed, mine; ``train/config.py``) and never import this module at run time; the
guidance section and the demo section live here because the sample stage and the demo compose the whole
config. :class:`GroupDiffConfig` composes them; ``from groupdiff.config import ModelConfig`` etc. work.

Presets are YAML files shipped in ``groupdiff/presets/``; :func:`load_preset` reads one by name and
applies dotted overrides such as ``model.depth=6`` or ``sampler.num_steps=50``.

Time convention (whole project): **t = 1 is pure noise, t = 0 is data**,
``x_t = (1 - t) * x_0 + t * noise`` and the model predicts the velocity ``v = noise - x_0``
(the released GroupDiff / REPA convention). Official SiT checkpoints use the opposite convention;
``ModelConfig.time_convention`` records which one a set of weights was trained in and the model
converts at its boundary (see ``groupdiff/models/sit.py``).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from .config_base import Section
from .data.config import DataConfig
from .grouping.config import EmbedConfig, MineConfig
from .models.config import ModelConfig
from .train.config import TrainConfig
from .transport.config import SamplerConfig, TransportConfig

PRESET_PACKAGE = "groupdiff.presets"


class GuidanceConfig(Section):
    """Classifier-free guidance and GroupDiff inference (DESIGN 1.4)."""

    mode: Literal["baseline", "groupdiff-f", "groupdiff-l"] = Field(
        "baseline",
        description="baseline: plain SiT CFG (N=1); groupdiff-f: both branches joint over the group; "
        "groupdiff-l: conditional per image, unconditional joint over the group.",
    )
    group_size: int = Field(1, ge=1, le=256, description="Images per group N at inference.")
    cfg_scale: float = Field(1.0, ge=0.0, le=50.0, description="Code convention v = v_u + s (v_c - v_u); 1 = no guidance.")
    interval_low: float = Field(0.0, ge=0.0, le=1.0, description="Guidance applied for t in [interval_low, interval_high] (t=1 noise).")
    interval_high: float = Field(1.0, ge=0.0, le=1.0, description="Upper end of the guidance interval (t=1 noise).")
    guide_first_channels: int = Field(
        0, ge=0, le=64, description="Legacy DiT switch: guide only the first K channels (3 in DiT/SiT legacy); 0 = all."
    )

    @model_validator(mode="after")
    def _check(self) -> "GuidanceConfig":
        if self.interval_low > self.interval_high:
            raise ValueError(
                f"guidance.interval_low={self.interval_low} is above guidance.interval_high={self.interval_high}"
            )
        if self.mode == "baseline" and self.group_size != 1:
            raise ValueError(f"guidance.mode='baseline' needs guidance.group_size=1, got {self.group_size}")
        return self


class DemoConfig(Section):
    """``groupdiff demo``: the preset's own training (the ``train`` section, the one trainer) cut short, then
    sample grids."""

    steps: int = Field(
        300, ge=1, le=1_000_000,
        description="Optimizer steps of the demo's training (replaces train.steps; one checkpoint, at the end).",
    )


class GroupDiffConfig(Section):
    """The whole configuration: what a preset file holds."""

    preset: str = Field("custom", description="Name of the preset this config came from.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone.")
    transport: TransportConfig = Field(default_factory=TransportConfig, description="Interpolant and timesteps.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Integrator.")
    guidance: GuidanceConfig = Field(default_factory=GuidanceConfig, description="CFG and GroupDiff inference.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset.")
    embed: EmbedConfig = Field(default_factory=EmbedConfig, description="Image embeddings for group mining.")
    mine: MineConfig = Field(default_factory=MineConfig, description="Group mining.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training (DeepSpeed).")
    demo: DemoConfig = Field(default_factory=DemoConfig, description="The short demo run.")

    @model_validator(mode="after")
    def _cross_check(self) -> "GroupDiffConfig":
        if self.guidance.group_size > self.model.max_group_size:
            raise ValueError(
                f"guidance.group_size={self.guidance.group_size} exceeds model.max_group_size={self.model.max_group_size}"
            )
        return self


def available_presets() -> list[str]:
    """Names of the preset files shipped in the package."""
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (numbers, booleans, lists), leaving strings as strings."""
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply dotted ``section.field=value`` overrides to a nested dict (returns a new dict)."""
    import copy

    out = copy.deepcopy(data)
    items = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    for key, value in items.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {part!r} is a value, not a section")
        node[parts[-1]] = value
    return out


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """``["section.field=value", ...]`` (the command line's and the UI's text form) -> ``{"section.field": value}``
    with YAML-typed values; later entries win. Code passes typed dicts and never formats this text itself."""
    parsed: dict[str, Any] = {}
    for text in texts:
        if "=" not in text:
            raise ValueError(f"override {text!r} is not of the form section.field=value")
        key, value = text.split("=", 1)
        parsed[key.strip()] = _parse_value(value)
    return parsed


def load_preset(name_or_path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> GroupDiffConfig:
    """Load a preset by name (``tiny-fmnist``) or from a YAML path and apply dotted overrides."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
        default_name = path.stem
    else:
        known = available_presets()
        if str(name_or_path) not in known:
            raise ValueError(f"unknown preset {str(name_or_path)!r}; expected one of {known} or a path to a .yaml file")
        text = resources.files(PRESET_PACKAGE).joinpath(f"{name_or_path}.yaml").read_text()
        default_name = str(name_or_path)
    data = yaml.safe_load(text) or {}
    data.setdefault("preset", default_name)
    data = apply_overrides(data, overrides or [])
    return GroupDiffConfig.model_validate(data)
