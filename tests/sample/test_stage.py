"""The sample stage: determinism, class balance, npz layout, shard resume, cfg lists, GroupDiff-l calls."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from groupdiff.cli import main
from groupdiff.config import load_preset
from groupdiff.models import build_model
from groupdiff.sample.stage import SampleStageConfig, load_model_and_config, run

torch.set_num_threads(1)

TINY = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.input_size=8", "model.patch_size=4",
        "model.num_classes=3", "model.max_group_size=4", "sampler.method=ode-euler", "sampler.num_steps=2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A consolidated checkpoint dir (model.safetensors + config.json) with non-trivial random weights."""
    folder = tmp_path_factory.mktemp("ckpt")
    config = load_preset("tiny-fmnist", TINY)
    torch.manual_seed(0)
    model = build_model(config.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(config.model_dump_json())
    return folder


def _sample(checkpoint, out, mode="groupdiff-f", n=2, **stage):
    model, config = load_model_and_config(
        checkpoint, overrides=[f"guidance.mode={mode}", f"guidance.group_size={n}", "guidance.cfg_scale=2.0"])
    stage = SampleStageConfig(out_dir=str(out), **{"num_samples": 12, "batch_groups": 2, "batches_per_shard": 1, **stage})
    return run(stage, config, model, progress=False), model


def _load(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def test_same_seed_same_images_and_layout(checkpoint, tmp_path):
    a, _ = _sample(checkpoint, tmp_path / "a")
    b, _ = _sample(checkpoint, tmp_path / "b")
    x, y = _load(a.npz[2.0]), _load(b.npz[2.0])
    np.testing.assert_array_equal(x["arr_0"], y["arr_0"])
    assert x["arr_0"].dtype == np.uint8 and x["arr_0"].shape == (12, 8, 8, 1)
    assert x["arr_0"].std() > 1  # real images, not a constant
    np.testing.assert_array_equal(x["arr_1"], x["labels"])
    # class balanced, members of a group share a class
    assert np.bincount(x["labels"], minlength=3).tolist() == [4, 4, 4]
    assert (x["labels"].reshape(-1, 2) == x["labels"].reshape(-1, 2)[:, :1]).all()
    assert a.grids[2.0].is_file() and a.grids[2.0].stat().st_size > 0
    record = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert record["config"]["guidance"]["mode"] == "groupdiff-f" and record["outputs"]["cfg2"].endswith("samples.npz")


def test_other_seed_other_images(checkpoint, tmp_path):
    a, _ = _sample(checkpoint, tmp_path / "a")
    model, config = load_model_and_config(checkpoint, overrides=["guidance.mode=groupdiff-f", "guidance.group_size=2",
                                                                 "guidance.cfg_scale=2.0", "sampler.seed=1"])
    b = run(SampleStageConfig(out_dir=str(tmp_path / "b"), num_samples=12, batch_groups=2), config, model, progress=False)
    assert not np.array_equal(_load(a.npz[2.0])["arr_0"], _load(b.npz[2.0])["arr_0"])


def test_sharded_and_resumed_equals_uninterrupted(checkpoint, tmp_path):
    whole, _ = _sample(checkpoint, tmp_path / "whole")
    r0, _ = _sample(checkpoint, tmp_path / "split", rank=0, world_size=2)
    assert r0.npz == {} and r0.shards_written == 2  # shards 0 and 2 of 3; rank 1's shard missing
    r1, _ = _sample(checkpoint, tmp_path / "split", rank=1, world_size=2)
    assert r1.shards_written == 1 and 2.0 in r1.npz
    np.testing.assert_array_equal(_load(whole.npz[2.0])["arr_0"], _load(r1.npz[2.0])["arr_0"])
    # an interrupted run: one shard lost, rerun regenerates only that one, same result
    (tmp_path / "split" / "shards" / "cfg2" / "shard_00001.npz").unlink()
    again, _ = _sample(checkpoint, tmp_path / "split")
    assert (again.shards_written, again.shards_skipped) == (1, 2)
    np.testing.assert_array_equal(_load(whole.npz[2.0])["arr_0"], _load(again.npz[2.0])["arr_0"])
    np.testing.assert_allclose(_load(whole.npz[2.0])["s_cross"], _load(again.npz[2.0])["s_cross"])


def test_cfg_list_reuses_noise(checkpoint, tmp_path):
    both, _ = _sample(checkpoint, tmp_path / "both", cfg_scales=[1.0, 4.0])
    alone, _ = _sample(checkpoint, tmp_path / "alone", cfg_scales=[4.0])
    np.testing.assert_array_equal(_load(both.npz[4.0])["arr_0"], _load(alone.npz[4.0])["arr_0"])
    assert not np.array_equal(_load(both.npz[1.0])["arr_0"], _load(both.npz[4.0])["arr_0"])


def _record_calls(model):
    calls = []

    def hook(module, args, kwargs):
        calls.append((kwargs.get("group_size", 1), args[2].clone()))

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("mode,n", [("groupdiff-l", 3), ("groupdiff-f", 3), ("baseline", 1)])
def test_group_sizes_the_mode_promises(checkpoint, tmp_path, mode, n):
    model, config = load_model_and_config(
        checkpoint, overrides=[f"guidance.mode={mode}", f"guidance.group_size={n}", "guidance.cfg_scale=2.0"])
    calls, handle = _record_calls(model)
    result = run(SampleStageConfig(out_dir=str(tmp_path), num_samples=9, batch_groups=3, grid_groups=0), config, model,
                 progress=False)
    handle.remove()
    null = model.null_label
    sizes = {size for size, _ in calls}
    if mode == "groupdiff-l":
        # conditional branch per image with real labels, unconditional branch joint over the group with null labels
        assert sizes == {1, n}
        assert all((y != null).all() for size, y in calls if size == 1)
        assert all((y == null).all() for size, y in calls if size == n)
    elif mode == "groupdiff-f":
        assert sizes == {n} and all(((y == null).sum() * 2 == len(y)) for _, y in calls)
    else:
        assert sizes == {1}
    s = _load(result.npz[2.0])["s_cross"]
    assert np.isfinite(s).all() == (n > 1)


def test_s_cross_is_zero_for_pairs(checkpoint, tmp_path):
    result, _ = _sample(checkpoint, tmp_path, mode="groupdiff-l", n=2)
    np.testing.assert_allclose(_load(result.npz[2.0])["s_cross"], 0.0, atol=1e-12)


def test_bad_inputs(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="fewer than the 3 classes"):
        _sample(checkpoint, tmp_path, num_samples=2)
    with pytest.raises(ValueError, match="not a multiple"):
        _sample(checkpoint, tmp_path, num_samples=7)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model_and_config(tmp_path)
    model, config = load_model_and_config(None, overrides=TINY + ["model.in_channels=4"])
    with pytest.raises(ValueError, match="needs a VAE decoder.*data.vae.weights"):
        run(SampleStageConfig(out_dir=str(tmp_path), num_samples=3), config, model, progress=False)


def test_cli(checkpoint, tmp_path, capsys):
    code = main(["sample", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--num-samples", "6",
                 "--set", "guidance.mode=groupdiff-l", "--set", "guidance.group_size=2", "--cfg-scales", "1.5"])
    assert code == 0
    assert _load(tmp_path / "cfg1.5" / "samples.npz")["arr_0"].shape == (6, 8, 8, 1)
    assert "mean S_cross" in capsys.readouterr().out


def test_latent_model_decodes_with_the_vae(tmp_path):
    from diffusers import AutoencoderKL

    from groupdiff.config import GuidanceConfig
    from groupdiff.sample import generate
    from groupdiff.sample.stage import derive_seed

    arch = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4,
            "block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2}
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(arch).eval()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    (tmp_path / "vae.json").write_text(json.dumps(arch))
    model, config = load_model_and_config(None, overrides=TINY + [
        "model.in_channels=4", "model.input_size=4", "model.patch_size=2",
        f"data.vae.weights={tmp_path / 'vae.safetensors'}", f"data.vae.config_json={tmp_path / 'vae.json'}"])
    result = run(SampleStageConfig(out_dir=str(tmp_path / "out"), num_samples=3, batch_groups=3), config, model,
                 progress=False)
    images = _load(result.npz[1.0] if 1.0 in result.npz else next(iter(result.npz.values())))["arr_0"]
    assert images.shape == (3, 8, 8, 3)  # 4x4 latents -> 8x8 RGB
    # equals decoding the generated latents by hand: vae.decode(z / scaling_factor)
    sampler = config.sampler.model_copy(update={"seed": derive_seed(config.sampler.seed, 0)})
    z = generate(model, torch.arange(3), sampler, config.guidance, (4, 4, 4))
    with torch.no_grad():
        x = vae.decode(z / config.data.vae.scaling_factor).sample
    expected = (127.5 * x + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_resume_refuses_shards_of_another_plan(checkpoint, tmp_path):
    _sample(checkpoint, tmp_path)
    with pytest.raises(ValueError, match="another sampling plan"):
        _sample(checkpoint, tmp_path, num_samples=6)
    model, config = load_model_and_config(checkpoint, overrides=["guidance.mode=groupdiff-f", "guidance.group_size=2",
                                                                 "guidance.cfg_scale=2.0", "sampler.seed=3"])
    with pytest.raises(ValueError, match="another sampling plan"):
        run(SampleStageConfig(out_dir=str(tmp_path), num_samples=12, batch_groups=2, batches_per_shard=1),
            config, model, progress=False)
    # another cfg scale of the same plan is welcome in the same folder
    more, _ = _sample(checkpoint, tmp_path, cfg_scales=[3.0])
    assert more.shards_written == 3 and 3.0 in more.npz


@pytest.fixture(scope="module")
def ema_and_raw_checkpoint(checkpoint, tmp_path_factory):
    """A training-style checkpoint: ``model.safetensors`` (the EMA) and other ``weights.safetensors`` (raw)."""
    folder = tmp_path_factory.mktemp("ema_raw")
    for name in ("model.safetensors", "config.json"):
        (folder / name).write_bytes((checkpoint / name).read_bytes())
    config = load_preset("tiny-fmnist", TINY)
    torch.manual_seed(1)
    raw = build_model(config.model)
    for p in raw.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_file({k: v.contiguous() for k, v in raw.state_dict().items()}, str(folder / "weights.safetensors"))
    return folder


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_weights_choice_samples_that_file_end_to_end(ema_and_raw_checkpoint, tmp_path, weights):
    """`groupdiff sample --weights W` gives exactly the images of a model holding W's file, and records W."""
    from safetensors.torch import load_file

    folder = ema_and_raw_checkpoint
    sets = ["guidance.mode=baseline", "guidance.group_size=1", "guidance.cfg_scale=2.0"]
    code = main(["sample", "--checkpoint", str(folder), "--out", str(tmp_path / "cli"), "--num-samples", "6",
                 "--weights", weights, *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    config = load_preset("tiny-fmnist", TINY + sets)
    by_hand = {}
    for name, file in (("ema", "model.safetensors"), ("raw", "weights.safetensors")):
        model = build_model(config.model)
        model.load_state_dict(load_file(str(folder / file)))
        result = run(SampleStageConfig(out_dir=str(tmp_path / name), num_samples=6, weights=name), config,
                     model.eval(), progress=False)
        by_hand[name] = _load(result.npz[2.0])["arr_0"]
    assert not np.array_equal(by_hand["ema"], by_hand["raw"])
    np.testing.assert_array_equal(_load(tmp_path / "cli" / "cfg2" / "samples.npz")["arr_0"], by_hand[weights])
    record = json.loads((tmp_path / "cli" / "sample.json").read_text())
    assert record["weights"] == weights and record["stage"]["weights"] == weights


def test_weights_mismatch_and_missing_file_are_refused(checkpoint, ema_and_raw_checkpoint, tmp_path):
    model, config = load_model_and_config(ema_and_raw_checkpoint, weights="raw")
    with pytest.raises(ValueError, match="holds the checkpoint's 'raw' weights but the stage says weights='ema'"):
        run(SampleStageConfig(out_dir=str(tmp_path), num_samples=3, weights="ema"), config, model, progress=False)
    with pytest.raises(FileNotFoundError, match="weights='raw' needs weights.safetensors"):
        load_model_and_config(checkpoint, weights="raw")
    with pytest.raises(ValueError, match="weights='best'"):
        load_model_and_config(checkpoint, weights="best")


def test_class_grid_is_one_row_per_class_enlarged_and_padded(tmp_path):
    from PIL import Image

    from groupdiff.sample.stage import save_class_grid

    # 3 classes of 8x8 images whose pixel value is 40 * class + 10 * index within the class; class 2 has 1 image
    labels = np.array([0, 1, 0, 1, 2, 0])
    images = np.zeros((6, 8, 8, 1), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i] = 40 * c + 10 * int((labels[:i] == c).sum())
    path = save_class_grid(images, labels, per_class=2, path=tmp_path / "classes.png", min_pixels=20)
    grid = np.asarray(Image.open(path).convert("L"))
    tile, pad = 24, 2  # 8 px enlarged 3x (the smallest integer factor reaching 20 px), 2 px padding
    assert grid.shape == (3 * (tile + pad) + pad, 2 * (tile + pad) + pad)
    value = lambda r, c: grid[pad + r * (tile + pad) + tile // 2, pad + c * (tile + pad) + tile // 2]  # noqa: E731
    assert [[value(r, c) for c in range(2)] for r in range(3)] == [[0, 10], [40, 50], [80, 0]]  # class 2 padded
    assert save_class_grid(images, labels, 0, tmp_path / "none.png") is None
