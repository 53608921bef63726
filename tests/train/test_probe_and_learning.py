"""The group-benefit probe's losses share timesteps and noise; the loss falls on the built-in data."""
from __future__ import annotations

import json

import pytest
import torch

from groupdiff.models import build_model
from groupdiff.train.data import class_neighbours
from groupdiff.train.probe import build_probe_set, run_probe, shuffle_permutation
from groupdiff.train.trainer import train
from groupdiff.transport.losses import training_losses


def test_probe_losses_use_identical_timesteps_and_noise(tiny_config, fmnist_small):
    cfg = tiny_config("train.variant=groupdiff-f", "train.probe_groups=8")
    images, labels = fmnist_small
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)  # non-trivial output
    for block in model.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    probe = build_probe_set(cfg, images, {"neighbours": class_neighbours(labels.numpy(), 8, 0)}, model)
    out = run_probe(model, probe, cfg, model.null_label, torch.device("cpu"))
    null = torch.full((probe.x0.shape[0],), model.null_label)
    with torch.no_grad():
        single = training_losses(model, probe.x0, null, 1, cfg.transport, t=probe.t, noise=probe.noise).mean()
        group = training_losses(model, probe.x0, null, 4, cfg.transport, t=probe.t, noise=probe.noise,
                                sample_ids=probe.sample_ids).mean()
        perm = shuffle_permutation(8, 4)
        # shuffling with N=1 only reorders the images: the per-image losses are the same numbers
        reordered = training_losses(model, probe.x0[perm], null, 1, cfg.transport, t=probe.t[perm],
                                    noise=probe.noise[perm]).mean()
    assert out["probe/loss_single"] == pytest.approx(float(single), rel=1e-6)
    assert out["probe/loss_group"] == pytest.approx(float(group), rel=1e-6)
    assert float(reordered) == pytest.approx(float(single), rel=1e-5)
    assert out["probe/loss_group"] != out["probe/loss_single"]  # group attention changes the prediction
    assert out["probe/loss_shuffled"] != out["probe/loss_group"]
    # fixed inputs: building the probe set again gives the same groups, timesteps and noise
    again = build_probe_set(cfg, images, {"neighbours": class_neighbours(labels.numpy(), 8, 0)}, model)
    assert torch.equal(again.noise, probe.noise) and torch.equal(again.t, probe.t)
    assert (probe.t.view(8, 4) == probe.t.view(8, 4)[:, :1]).all()


@pytest.mark.parametrize("variant", ["baseline", "groupdiff-l", "groupdiff-f"])
def test_loss_falls_on_the_built_in_data(variant, tmp_path, tiny_config, fmnist_small):
    cfg = tiny_config(f"train.variant={variant}", "train.steps=40", "train.log_every=10", "train.checkpoint_every=40",
                      "train.lr=0.002", "train.group_ratio=0.3")
    train(cfg, tmp_path, data=fmnist_small)
    losses = [json.loads(x)["metrics"]["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0], losses
