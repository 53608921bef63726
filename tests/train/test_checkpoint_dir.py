"""CheckpointDir: the file names of a checkpoint folder and clear errors for a missing or corrupt file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from groupdiff.train.checkpoint import CheckpointDir, CheckpointError


def _complete(folder) -> CheckpointDir:
    ckpt = CheckpointDir(folder)
    folder.mkdir(parents=True)
    for name in (CheckpointDir.EMA, CheckpointDir.RAW):
        save_file({"w": torch.zeros(4)}, str(folder / name))
    ckpt.config_file.write_text(json.dumps({"model": {}, "train": {}}))
    ckpt.state_file.write_text(json.dumps({"step": 3}))
    return ckpt


def test_names_and_a_complete_folder(tmp_path):
    ckpt = _complete(tmp_path / "step_00000003")
    assert ckpt.weights_file("ema").name == "model.safetensors" and ckpt.weights_file("raw").name == "weights.safetensors"
    assert ckpt.rng_file(1) == ckpt.path / "rng" / "rank1.pt" and ckpt.is_complete()
    assert ckpt.require() is ckpt and ckpt.read_state() == {"step": 3}


def test_missing_file_names_the_path_and_what_it_holds(tmp_path):
    ckpt = _complete(tmp_path / "c")
    ckpt.raw_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"has no weights\.safetensors \(the consolidated raw weights"):
        ckpt.require()


@pytest.mark.parametrize("name, cut", [("model.safetensors", 10), ("model.safetensors", -4), ("trainer_state.json", 3)])
def test_truncated_file_is_refused(tmp_path, name, cut):
    ckpt = _complete(tmp_path / "c")
    data = (ckpt.path / name).read_bytes()
    (ckpt.path / name).write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=f"{name}.*is corrupt"):
        ckpt.require()
