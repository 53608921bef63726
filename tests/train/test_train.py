"""End-to-end training on DeepSpeed (one process, CPU, fp32): variants, checkpoints, resume, init, NaN stop."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.models import build_model, official_state_dict
from groupdiff.sample.generate import generate
from groupdiff.sample.stage import load_model_and_config, resolve_checkpoint_dir
from groupdiff.tracking import JsonlTracker
from groupdiff.train.checkpoint import find_latest
from groupdiff.train.trainer import NonFiniteLossError, train


def _metrics(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == "metrics" and "loss" in r["metrics"]]


@pytest.mark.parametrize("variant", ["baseline", "groupdiff-l", "groupdiff-f"])
def test_each_variant_trains_and_checkpoints(variant, tmp_path, tiny_config, fmnist_small):
    cfg = tiny_config(f"train.variant={variant}", "train.group_ratio=0.5", "train.probe_every=2", "train.steps=4")
    result = train(cfg, tmp_path, data=fmnist_small)
    ckpt = result.checkpoint
    assert result.step == 4 and ckpt == find_latest(tmp_path) and ckpt.name == "step_00000004"
    for name in ("model.safetensors", "weights.safetensors", "config.json", "trainer_state.json", "ds/state"):
        assert (ckpt / name).exists(), name
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == ["step_00000002", "step_00000004"]
    # the checkpoint folder is what the sampler loads: EMA weights + config, then images come out
    model, saved = load_model_and_config(ckpt)
    # the run directory and the trainer's `latest` pointer file resolve to that same checkpoint
    for handle in (tmp_path, tmp_path / "checkpoints" / "latest"):
        assert resolve_checkpoint_dir(handle) == ckpt
    torch.testing.assert_close(model.state_dict()["final_layer.linear.weight"],
                               load_file(str(ckpt / "model.safetensors"))["final_layer.linear.weight"])
    raw_model, _ = load_model_and_config(ckpt, weights="raw")  # the raw weights of the same checkpoint
    torch.testing.assert_close(raw_model.state_dict()["final_layer.linear.weight"],
                               load_file(str(ckpt / "weights.safetensors"))["final_layer.linear.weight"])
    mode, n = ("baseline", 1) if variant == "baseline" else (variant, 4)
    guidance = saved.guidance.model_copy(update={"mode": mode, "group_size": n, "cfg_scale": 1.5})
    samples = generate(model, torch.tensor([3, 3, 3, 3, 7, 7, 7, 7]), saved.sampler.model_copy(update={"num_steps": 2}), guidance,
                       (1, 16, 16))
    assert samples.shape == (8, 1, 16, 16) and torch.isfinite(samples).all()
    records = _metrics(tmp_path)
    last = records[-1]["metrics"]
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(r["metrics"]["loss"])) for r in records)
    assert last["count/images"] == 4 * 32 and last["grad_norm"] > 0 and last["lr"] == cfg.train.lr
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if variant == "baseline":
        assert last["count/group_batches"] == 0 and last["count/unconditional_images"] == 0
    if variant == "groupdiff-f":
        assert last["count/direct_batches"] == 0
    if variant == "groupdiff-l":
        assert last["count/unconditional_images"] == 32 * last["count/group_batches"]
    if variant != "baseline":
        probes = [r["metrics"] for r in json.loads("[" + ",".join((tmp_path / "metrics.jsonl").read_text().splitlines()) + "]")
                  if r["kind"] == "metrics" and "probe/loss_group" in r["metrics"]]
        assert len(probes) == 2 and all(p["probe/loss_shuffled"] > 0 for p in probes)
    assert state["step"] == 4 and state["world_size"] == 1


class _Interrupt(Exception):
    pass


class _KillAt(JsonlTracker):
    """A tracker that 'kills' the run when step ``at`` is logged (after the checkpoint before it)."""

    def __init__(self, path, at):
        super().__init__(path)
        self.at = at

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        if step == self.at:
            raise _Interrupt(step)


@pytest.mark.parametrize(("stage", "ema_warmup"), [(0, "ramp"), (2, "power")])
def test_resumed_run_equals_uninterrupted_run(stage, ema_warmup, tmp_path, tiny_config, fmnist_small):
    """Weights, EMA (whose warm-up decay depends on the step) and counters equal an uninterrupted run."""
    opts = ("train.variant=groupdiff-l", "train.group_ratio=0.5", "train.steps=8", "train.checkpoint_every=4",
            f"train.zero_stage={stage}", f"train.ema_warmup={ema_warmup}", "train.ema_decay=0.99",
            "train.micro_batch_images=16", "train.warmup_steps=3")
    straight = train(tiny_config(*opts), tmp_path / "straight", data=fmnist_small)
    with pytest.raises(_Interrupt):
        train(tiny_config(*opts), tmp_path / "cut", data=fmnist_small,
              tracker=_KillAt(tmp_path / "cut" / "metrics.jsonl", at=6))
    assert find_latest(tmp_path / "cut").name == "step_00000004"
    resumed = train(tiny_config(*opts, "train.resume=auto"), tmp_path / "cut", data=fmnist_small)
    assert resumed.step == 8
    for name in ("weights.safetensors", "model.safetensors"):
        a, b = load_file(str(straight.checkpoint / name)), load_file(str(resumed.checkpoint / name))
        assert a.keys() == b.keys()
        moved = load_file(str(tmp_path / "straight" / "checkpoints" / "step_00000004" / name))
        assert any(not torch.equal(a[k], moved[k]) for k in a)  # the last 4 steps did change the weights
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"{name}:{key}")
    assert json.loads((resumed.checkpoint / "trainer_state.json").read_text())["counters"] == \
        json.loads((straight.checkpoint / "trainer_state.json").read_text())["counters"]
    # the EMA schedule continued at the restored step (a restarted schedule would use decay(0) at step 5)
    decays = {r["step"]: r["metrics"]["ema_decay"] for r in _metrics(tmp_path / "straight")}
    resumed_decays = {r["step"]: r["metrics"]["ema_decay"] for r in _metrics(tmp_path / "cut") if r["step"] > 4}
    assert resumed_decays == {s: decays[s] for s in range(5, 9)}
    assert decays[5] > decays[1] + 0.1
    ema, raw = (load_file(str(resumed.checkpoint / n)) for n in ("model.safetensors", "weights.safetensors"))
    assert not torch.equal(ema["final_layer.linear.weight"], raw["final_layer.linear.weight"])


ZERO_OPTS = ("train.variant=groupdiff-f", "train.steps=2", "train.checkpoint_every=1", "train.micro_batch_images=16")


@pytest.fixture(scope="module")
def zero0_run(tmp_path_factory, tiny_config, fmnist_small):
    run_dir = tmp_path_factory.mktemp("zero0")
    return train(tiny_config(*ZERO_OPTS, "train.zero_stage=0"), run_dir, data=fmnist_small), run_dir


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_match_plain_data_parallel_and_resume(stage, zero0_run, tmp_path, tiny_config, fmnist_small):
    """Each ZeRO stage is the same optimiser: weights and grad norms equal the stage-0 run; it checkpoints and resumes."""
    reference, ref_dir = zero0_run
    first = train(tiny_config(*ZERO_OPTS, f"train.zero_stage={stage}"), tmp_path, data=fmnist_small)
    expected, got = load_file(str(reference.checkpoint / "weights.safetensors")), load_file(str(first.checkpoint / "weights.safetensors"))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    norms = [[r["metrics"]["grad_norm"] for r in _metrics(d)] for d in (ref_dir, tmp_path)]
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)
    again = train(tiny_config(*ZERO_OPTS, f"train.zero_stage={stage}", "train.steps=3", "train.resume=auto"),
                  tmp_path, data=fmnist_small)
    assert first.step == 2 and again.step == 3
    model = build_model(tiny_config().model)
    state = load_file(str(again.checkpoint / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_trains_close_to_fp32(stage, zero0_run, tmp_path, tiny_config, fmnist_small):
    """DeepSpeed bf16 (auto on GPU, explicit here on CPU): the model runs in bf16, the loss stays near fp32's."""
    reference, ref_dir = zero0_run
    train(tiny_config(*ZERO_OPTS, f"train.zero_stage={stage}", "train.precision=bf16"), tmp_path, data=fmnist_small)
    ours, ref = _metrics(tmp_path), _metrics(ref_dir)
    # step 1 predicts exactly 0 in both (adaLN-zero init); step 2 runs the updated model in bf16
    assert ours[1]["metrics"]["loss"] == pytest.approx(ref[1]["metrics"]["loss"], rel=2e-2)
    assert ours[1]["metrics"]["loss"] != ref[1]["metrics"]["loss"]
    assert all(torch.isfinite(torch.tensor(r["metrics"]["grad_norm"])) for r in ours)


def test_pretrained_init_from_official_layout(tmp_path, tiny_config, fmnist_small):
    cfg = tiny_config()
    source = build_model(cfg.model)
    torch.nn.init.normal_(source.final_layer.linear.weight, std=0.1)
    official = official_state_dict(source)
    path = tmp_path / "SiT-tiny.pt"
    torch.save({"model": official, "ema": official, "opt": {}}, path)
    # EMA decay 1 without warm-up keeps the initial weights, so model.safetensors shows exactly what was loaded
    run = train(tiny_config(f"train.init_from=pretrained:{path}", "train.ema_decay=1.0", "train.ema_warmup=none",
                            "train.steps=1"),
                tmp_path / "run", data=fmnist_small)
    report = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert report["mode"] == "pretrained" and report["newly_initialised"] == ["s_embedder.embedding_table.weight"]
    loaded = load_file(str(run.checkpoint / "model.safetensors"))
    for key, value in official.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_pretrained_shape_mismatch_fails_naming_the_key(tmp_path, tiny_config, fmnist_small):
    state = official_state_dict(build_model(tiny_config("model.hidden_size=128").model))
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="shape mismatch for 'x_embedder.proj.weight'|shape mismatch for"):
        train(tiny_config(f"train.init_from=pretrained:{path}"), tmp_path / "run", data=fmnist_small)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config, fmnist_small):
    images, labels = fmnist_small
    good = train(tiny_config("train.steps=2"), tmp_path, data=fmnist_small)
    poisoned = images.clone()
    poisoned[:, :, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at step 3.*step_00000002"):
        train(tiny_config("train.steps=6", "train.resume=auto"), tmp_path, data=(poisoned, labels))
    assert find_latest(tmp_path) == good.checkpoint
    assert all(torch.isfinite(v).all() for v in load_file(str(good.checkpoint / "weights.safetensors")).values())


def test_bad_inputs_fail_before_any_compute(tmp_path, tiny_config, fmnist_small):
    train(tiny_config("train.steps=1"), tmp_path / "run", data=fmnist_small)
    with pytest.raises(ValueError, match="another model .*model.depth: checkpoint 2 vs run 3"):
        train(tiny_config("train.steps=2", "model.depth=3", "train.resume=auto"), tmp_path / "run", data=fmnist_small)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        train(tiny_config(f"train.resume={tmp_path / 'nowhere'}"), tmp_path / "other", data=fmnist_small)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny_config(f"train.init_from=pretrained:{tmp_path / 'missing.pt'}"), tmp_path / "other",
              data=fmnist_small)
    with pytest.raises(ValueError, match="cannot resume .*train.seed"):
        train(tiny_config("train.steps=2", "train.seed=5", "train.resume=auto"), tmp_path / "run", data=fmnist_small)
    with pytest.raises(ValueError, match="needs the null label"):
        train(tiny_config("train.variant=groupdiff-l", "model.class_dropout_prob=0"), tmp_path / "other",
              data=fmnist_small)
    assert not (tmp_path / "other").exists()
