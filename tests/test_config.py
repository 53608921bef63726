"""Typed config: presets load by name, overrides apply field by field, bad values are clear errors."""
from __future__ import annotations

import pydantic
import pytest

from groupdiff.config import GroupDiffConfig, available_presets, load_preset
from groupdiff.config_base import Section


def test_all_presets_load_and_build_valid_configs():
    names = available_presets()
    assert {"tiny-fmnist", "sit-s2", "sit-b2", "sit-l2", "sit-xl2"} <= set(names)
    for name in names:
        config = load_preset(name)
        assert config.preset == name


def test_released_sampling_settings_in_xl_preset():
    g = load_preset("sit-xl2").guidance
    assert (g.mode, g.group_size, g.cfg_scale, g.interval_low, g.interval_high) == ("groupdiff-l", 4, 2.585, 0.25, 0.75)


def test_overrides_are_typed_and_validated():
    config = load_preset("tiny-fmnist", ["model.depth=6", "sampler.method=ode-euler", "guidance.cfg_scale=1.5"])
    assert config.model.depth == 6 and config.sampler.method == "ode-euler" and config.guidance.cfg_scale == 1.5
    with pytest.raises(pydantic.ValidationError, match="model.depth"):
        load_preset("tiny-fmnist", ["model.depth=0"])
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        load_preset("tiny-fmnist", ["model.dept=6"])
    with pytest.raises(ValueError, match="not of the form"):
        load_preset("tiny-fmnist", ["model.depth"])


def test_cross_field_checks_name_the_values():
    with pytest.raises(pydantic.ValidationError, match="guidance.group_size=12 exceeds model.max_group_size=8"):
        load_preset("tiny-fmnist", ["guidance.mode=groupdiff-l", "guidance.group_size=12"])
    with pytest.raises(pydantic.ValidationError, match="interval_low=0.8 is above"):
        load_preset("tiny-fmnist", ["guidance.interval_low=0.8", "guidance.interval_high=0.2"])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*tiny-fmnist"):
        load_preset("nope")


def test_preset_from_a_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  name: SiT-B/4\n")
    config = load_preset(path)
    assert config.preset == "mine" and config.model.name == "SiT-B/4"


def _sections(model: type[pydantic.BaseModel]):
    yield model
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
            yield from _sections(field.annotation)


def test_every_field_has_a_description():
    """Descriptions render as help text in the Prefect UI forms."""
    for section in _sections(GroupDiffConfig):
        assert issubclass(section, Section)
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"
