"""The demo behind `make run`: it trains (loss goes down) and writes what it promises."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from groupdiff.cli import main
from groupdiff.config import load_preset
from groupdiff.models import build_model


def test_demo_trains_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main([
        "demo", "--out", str(out), "--set", "demo.steps=60", "--set", "demo.batch_size=32",
        "--set", "data.limit=512", "--set", "sampler.num_steps=2", "--set", "model.depth=2",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "loss.png",
                 "samples_baseline.png", "samples_groupdiff-l.png"):
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["metrics"]["loss"] for r in records if r["kind"] == "metrics"]
    assert len(losses) == 7 and losses[-1] < losses[0]  # steps 0,10,...,50,59
    # the saved weights load back into the model the saved config describes
    config = load_preset("tiny-fmnist", ["model.depth=2"])
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == config.model.model_dump()
    build_model(config.model).load_state_dict(load_file(str(out / "model.safetensors")))


def test_cli_reports_bad_values_cleanly(capsys):
    assert main(["demo", "--preset", "no-such-preset"]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err


def test_models_command_prints_the_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "SiT-XL/2" in out and "674.9" in out and "32.9" in out
