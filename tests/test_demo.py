"""The demo behind `make run`: it trains (loss goes down) and writes what it promises."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from groupdiff.cli import main
from groupdiff.config import load_preset
from groupdiff.models import build_model


def test_demo_trains_and_writes_its_outputs(tmp_path, capsys):
    """The demo is the one trainer cut to demo.steps: its run folder, checkpoint and metrics, plus the grids."""
    out = tmp_path / "demo"
    code = main([
        "demo", "--out", str(out), "--set", "demo.steps=60", "--set", "train.global_batch_images=32",
        "--set", "data.limit=512", "--set", "sampler.num_steps=2", "--set", "model.depth=2",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "60 steps" in printed
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "loss.png",
                 "samples_baseline.png", "samples_groupdiff-l.png"):
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["metrics"]["loss"]) for r in records if r["kind"] == "metrics" and "loss" in r["metrics"]]
    assert [step for step, _ in logged] == [10, 20, 30, 40, 50, 60]  # the preset's train.log_every
    assert logged[-1][1] < logged[0][1]
    assert [r["name"] for r in records if r["kind"] == "artifact"] == ["samples_baseline.png", "samples_groupdiff-l.png"]
    # one checkpoint, at the end; the demo's model.safetensors is its EMA weights
    checkpoint = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    assert checkpoint.name == "step_00000060"
    assert (out / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    # the saved weights load back into the model the saved config describes
    config = load_preset("tiny-fmnist", ["model.depth=2"])
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == config.model.model_dump() and saved["train"]["steps"] == 60
    build_model(config.model).load_state_dict(load_file(str(out / "model.safetensors")))


def test_cli_reports_bad_values_cleanly(capsys):
    assert main(["demo", "--preset", "no-such-preset"]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err


def test_models_command_prints_the_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "SiT-XL/2" in out and "674.9" in out and "32.9" in out
