"""The unshrunk tiny-fmnist preset learns on the built-in data for every variant (issue: 200 steps)."""
from __future__ import annotations

import json

import pytest

from groupdiff.config import load_preset
from groupdiff.train.trainer import train


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["baseline", "groupdiff-l", "groupdiff-f"])
def test_tiny_preset_loss_falls_over_200_steps(variant, tmp_path):
    config = load_preset("tiny-fmnist", [
        f"train.variant={variant}", "train.steps=200", "train.probe_every=0", "train.checkpoint_every=200",
        "data.limit=8192",
    ])
    assert config.train.steps == 200 and config.model.depth == 4  # the preset's model, not a shrunk one
    train(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["metrics"]["loss"] for r in records if r.get("kind") == "metrics" and "loss" in r.get("metrics", {})]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert len(losses) >= 10
    assert last < 0.6 * first, losses
