"""SiT construction, official state-dict compatibility and bad-input errors (DESIGN 1.1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from groupdiff.config import ModelConfig
from groupdiff.models import (
    SiT,
    SiT_models,
    build_model,
    count_parameters,
    load_official_state_dict,
    official_state_dict,
    read_state_dict,
)
from groupdiff.models.layers import get_2d_sincos_pos_embed
from groupdiff.safeload import CheckpointError

OFFICIAL_KEYS = [
    "x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight",
    "y_embedder.embedding_table.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
    "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "blocks.0.adaLN_modulation.1.weight",
    "final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight",
]


def tiny(**kw) -> SiT:
    args = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    args.update(kw)
    return SiT(**args)


def test_official_names_and_parameter_counts():
    expected_millions = {"SiT-S/2": 33, "SiT-B/2": 130, "SiT-L/2": 458, "SiT-XL/2": 675}
    assert len(SiT_models) == 12
    with torch.device("meta"):
        for name, millions in expected_millions.items():
            count = count_parameters(SiT_models[name]()) / 1e6
            assert abs(count - millions) / millions < 0.01, (name, count)


def test_official_key_layout():
    keys = set(tiny().state_dict())
    for key in OFFICIAL_KEYS:
        assert key in keys
    assert tiny().state_dict()["y_embedder.embedding_table.weight"].shape[0] == 11  # null row for CFG


def test_learn_sigma_doubles_output_channels():
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1])
    assert tiny(learn_sigma=True)(x, t, y).shape == (2, 8, 8, 8)
    assert tiny(learn_sigma=False)(x, t, y).shape == (2, 4, 8, 8)


def test_pos_embed_is_2d_sincos():
    emb = get_2d_sincos_pos_embed(8, 2)  # 4 positions, half the dims for each axis: [sin | cos] per axis
    assert np.allclose(emb[0], [0, 0, 1, 1, 0, 0, 1, 1])  # position (0, 0)
    assert np.allclose(emb[1, :2], np.sin([1.0, 1e-2]))  # w=1: first axis is w, as in the official code
    assert np.allclose(emb[2, 4:6], np.sin([1.0, 1e-2]))  # h=1


def test_official_state_dict_round_trip_reports_new_group_parameters(tmp_path):
    torch.manual_seed(0)
    source = tiny()
    official = official_state_dict(source)
    assert "s_embedder.embedding_table.weight" not in official
    path = tmp_path / "SiT-official.pt"
    torch.save({"model": official, "ema": official, "opt": {}, "args": None}, path)
    state, entry = read_state_dict(path)
    assert entry == "ema"
    target = tiny()
    before = target.s_embedder.embedding_table.weight.clone()
    report = load_official_state_dict(target, state, entry)
    assert report.newly_initialised == ["s_embedder.embedding_table.weight"]
    assert "newly initialised: s_embedder.embedding_table.weight" in report.summary()
    assert torch.equal(target.s_embedder.embedding_table.weight, before)
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([3, 4])
    assert torch.equal(source.eval()(x, t, y), target.eval()(x, t, y))


def test_safetensors_and_ddp_prefix(tmp_path):
    source = tiny()
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    state, _ = read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    report = load_official_state_dict(tiny(), state)
    assert report.newly_initialised == []


def test_wrong_shape_is_an_error_naming_the_key():
    state = official_state_dict(tiny())
    state["blocks.1.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.qkv\.weight"):
        load_official_state_dict(tiny(), state)


def test_unknown_and_missing_keys_are_errors():
    state = official_state_dict(tiny())
    with pytest.raises(KeyError, match="not_a_layer"):
        load_official_state_dict(tiny(), {**state, "not_a_layer.weight": torch.zeros(1)})
    del state["final_layer.linear.bias"]
    with pytest.raises(KeyError, match="final_layer.linear.bias"):
        load_official_state_dict(tiny(), state)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt' holds pickled Python objects .*_NotATensor"):
        read_state_dict(path)


class _NotATensor:
    pass


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.randn(6, 4, 8, 8), t=torch.rand(6), y=torch.zeros(6, dtype=torch.long), group_size=4),
         "batch of 6 images is not divisible by group_size=4"),
        (dict(x=torch.randn(20, 4, 8, 8), t=torch.rand(20), y=torch.zeros(20, dtype=torch.long), group_size=20),
         "group_size=20 exceeds max_group_size=16"),
        (dict(x=torch.randn(2, 4, 8, 8), t=torch.tensor([0.5, float("nan")]), y=torch.zeros(2, dtype=torch.long)),
         "timesteps must be finite, got nan"),
        (dict(x=torch.randn(2, 4, 8, 8), t=torch.rand(2), y=torch.tensor([0, 11])),
         r"label 11 out of range \[0, 10\]"),
        (dict(x=torch.randn(2, 8, 8), t=torch.rand(2), y=torch.zeros(2, dtype=torch.long)),
         r"x must be \(B\*N, C, H, W\)"),
    ],
)
def test_bad_input_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny()(**kwargs)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model name 'SiT-XXL/2'"):
        build_model(ModelConfig(name="SiT-XXL/2"))


def test_build_model_from_config_matches_official_constructor():
    config = ModelConfig(name="SiT-S/8", input_size=16, in_channels=4, num_classes=10)
    model = build_model(config)
    assert len(model.blocks) == 12 and model.patch_size == 8 and model.num_heads == 6


def test_forward_reads_no_values_off_cpu_unless_debug(monkeypatch):
    """On an accelerator, reading a value is a device-to-host sync: the forward must run on tensors whose
    values cannot be read at all (the ``meta`` device stands in for a GPU here), and the value checks must
    come back when debugging is asked for."""
    import groupdiff.models.sit as sit_module

    with torch.device("meta"):
        model = tiny()
        x, t, y = torch.randn(8, 4, 8, 8), torch.rand(8), torch.zeros(8, dtype=torch.long)
    out = model(x, t, y, group_size=4)  # raises if anything calls .item()/bool() on a meta tensor
    assert out.device.type == "meta" and out.shape == (8, model.out_channels, 8, 8)
    monkeypatch.setattr(sit_module, "DEBUG_CHECKS", True)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the value checks now read the (unreadable) values
        model(x, t, y, group_size=4)
