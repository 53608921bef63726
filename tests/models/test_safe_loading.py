"""Weights are read without running code, and a bad weights file is one clear error.

A pickle whose unpickling would run a command (``__reduce__`` -> ``os.system("touch MARKER")``) is fed to
every public loader: each refuses it with an error naming the file and what it should hold, and the marker
is never created. Truncated, empty, random and wrong-model ``model.safetensors`` files, and a checkpoint
folder without ``config.json``, give ``groupdiff sample`` one error line (exit 2), not a traceback.
A scan of the source keeps every ``torch.load`` weights-only and every ``np.load`` pickle-free.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from groupdiff.cli import main
from groupdiff.config import load_preset
from groupdiff.models import build_model, read_state_dict
from groupdiff.safeload import CheckpointError, load_tensor_file
from groupdiff.sample.stage import load_model_and_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.input_size=8", "model.patch_size=4",
        "model.num_classes=3", "model.max_group_size=4", "sampler.method=ode-euler", "sampler.num_steps=2"]


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a checkpoint carrying code would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A weights file at ``path`` whose unpickling would create ``marker``: torch's zip format, or a bare
    pickle (protocol 2, as old ``.bin`` files are)."""
    obj = {"pos_embed": torch.zeros(1), "payload": _Payload(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)
    return path


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def _refused(call, path: Path, marker: Path, exc_type=CheckpointError):
    with pytest.raises(exc_type) as info:
        call()
    assert str(path) in str(info.value)
    assert not marker.exists(), "the pickle's code ran"
    return str(info.value)


def test_the_payload_is_real(tmp_path, marker):
    """Plain unpickling of the crafted file does run its code: the refusals below are not vacuous."""
    path = _evil(tmp_path / "evil.pt", marker, legacy=True)
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("name, legacy", [("evil.pt", False), ("evil.pth", False), ("evil.bin", True),
                                          ("evil.ckpt", True)])
def test_read_state_dict_refuses_a_pickle_carrying_code(tmp_path, marker, name, legacy):
    path = _evil(tmp_path / name, marker, legacy)
    message = _refused(lambda: read_state_dict(path), path, marker)
    assert "pickled Python objects" in message and "nothing in it was run" in message
    assert "expected a SiT state dict" in message


def test_load_tensor_file_names_the_refused_global(tmp_path, marker):
    path = _evil(tmp_path / "evil.pt", marker)
    message = _refused(lambda: load_tensor_file(path, "tensors"), path, marker)
    assert re.search(r"it asks for the Python global (posix|nt)\.system", message)


def _checkpoint(folder: Path, config_overrides=TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = load_preset("tiny-fmnist", config_overrides)
    model = build_model(config.model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(config.model_dump_json())
    return folder


def _sample_cli(folder: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["sample", "--checkpoint", str(folder), "--out", str(out), "--num-samples", "6"])
    return code, capsys.readouterr().err


def test_sample_refuses_a_pickle_named_model_safetensors(tmp_path, marker, capsys):
    folder = _checkpoint(tmp_path / "ckpt")
    _evil(folder / "model.safetensors", marker)
    code, err = _sample_cli(folder, tmp_path / "out", capsys)
    assert code == 2 and not marker.exists()
    assert err.startswith("groupdiff sample: error: checkpoint file") and "model.safetensors" in err
    assert "expected the consolidated EMA weights (safetensors)" in err and len(err.strip().splitlines()) == 1


def test_train_init_from_refuses_a_pickle(tmp_path, marker):
    from groupdiff.train.trainer import _initial_weights

    path = _evil(tmp_path / "sit.pt", marker)
    config = load_preset("tiny-fmnist", TINY + [f"train.init_from=pretrained:{path}"])
    _refused(lambda: _initial_weights(build_model(config.model), config, None, False), path, marker)


def test_train_init_from_a_wrong_model_names_the_key(tmp_path):
    from groupdiff.train.trainer import _initial_weights

    other = load_preset("tiny-fmnist", TINY + ["model.hidden_size=64", "model.num_heads=4"])
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(other.model).state_dict().items()}, str(path))
    config = load_preset("tiny-fmnist", TINY + [f"train.init_from=pretrained:{path}"])
    with pytest.raises(CheckpointError, match=r"shape mismatch for '[\w.]+'.*expected a checkpoint of model"):
        _initial_weights(build_model(config.model), config, None, False)


@pytest.mark.parametrize("encoder, name, legacy", [("clip", "open_clip_pytorch_model.bin", True),
                                                   ("dinov2", "dino.pth", False),
                                                   ("classifier", "clf.safetensors", False),
                                                   ("classifier", "clf.pt", False)])
def test_encoders_refuse_a_pickle(tmp_path, marker, encoder, name, legacy):
    from groupdiff.encoders.factory import build_encoder
    from groupdiff.grouping.config import EmbedConfig

    path = _evil(tmp_path / name, marker, legacy)
    _refused(lambda: build_encoder(EmbedConfig(encoder=encoder, weights=str(path))), path, marker)


def test_classifier_truncated_weights_are_one_clear_error(tmp_path):
    from groupdiff.encoders.classifier import SmallCNN, load_classifier, save_classifier

    path = tmp_path / "clf.safetensors"
    save_classifier(SmallCNN(), path)
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match=r"clf\.safetensors' is corrupt or not safetensors \(truncated.*expected a groupdiff classifier"):
        load_classifier(path)


@pytest.mark.parametrize("name, legacy, folder", [("vae.bin", True, False), ("vae.pt", False, False),
                                                  ("diffusion_pytorch_model.bin", True, True)])
def test_vae_refuses_a_pickle(tmp_path, marker, name, legacy, folder):
    from groupdiff.data.config import VaeConfig
    from groupdiff.data.latents import build_vae

    where = tmp_path / "vae" if folder else tmp_path
    where.mkdir(exist_ok=True)
    if folder:
        (where / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    path = _evil(where / name, marker, legacy)
    _refused(lambda: build_vae(VaeConfig(weights=str(where if folder else path))), path, marker)


def test_rng_states_are_read_weights_only(tmp_path, marker):
    from groupdiff.train.checkpoint import CheckpointDir, load_rng

    ckpt = CheckpointDir(tmp_path / "step_00000001")
    (ckpt.path / "rng").mkdir(parents=True)
    path = _evil(ckpt.rng_file(0), marker)
    _refused(lambda: load_rng(ckpt.path, 0), path, marker)


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("damage, problem", [
    (_cut, r"truncated: tensors end at byte \d+ of \d+"),
    (lambda data: b"", r"0 bytes, shorter than the 8-byte header length"),
    (lambda data: os.urandom(4096), r"header of \d+ bytes does not fit in 4096 bytes"),
    (lambda data: data[:8] + b"{not json" + data[17:], r"unreadable header: .*"),
])
def test_sample_with_a_damaged_model_safetensors_is_one_error_line(tmp_path, capsys, damage, problem):
    folder = _checkpoint(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    code, err = _sample_cli(folder, tmp_path / "out", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(rf"groupdiff sample: error: checkpoint file '{re.escape(str(weights))}' is corrupt \({problem}\); "
                     r"expected the consolidated EMA weights \(safetensors\)", err), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npz"))
    with pytest.raises((CheckpointError, FileNotFoundError), match=re.escape(str(weights))):
        read_state_dict(weights)


def test_sample_with_weights_of_another_model_names_the_key(tmp_path, capsys):
    folder = _checkpoint(tmp_path / "ckpt")
    other = load_preset("tiny-fmnist", TINY + ["model.hidden_size=64", "model.num_heads=4"])
    save_file({k: v.contiguous() for k, v in build_model(other.model).state_dict().items()},
              str(folder / "model.safetensors"))
    code, err = _sample_cli(folder, tmp_path / "out", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model.safetensors' does not match model" in err and "wrong shapes ['" in err and ": file (64,) vs model (32,)" in err
    # keys of another network entirely
    save_file({"encoder.weight": torch.zeros(3)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \['[\w.]+'.*unexpected \['encoder.weight'\]"):
        load_model_and_config(folder)


def test_sample_with_no_config_json_says_what_is_missing(tmp_path, capsys):
    folder = _checkpoint(tmp_path / "ckpt")
    (folder / "config.json").unlink()
    code, err = _sample_cli(folder, tmp_path / "out", capsys)
    assert code == 2
    assert "has no config.json (the run's GroupDiffConfig (JSON))" in err and str(folder) in err


def test_a_valid_state_dict_still_loads(tmp_path):
    config = load_preset("tiny-fmnist", TINY)
    model = build_model(config.model)
    torch.save({"ema": model.state_dict(), "args": {"lr": 1e-4}}, tmp_path / "ok.pt")
    state, entry = read_state_dict(tmp_path / "ok.pt")
    assert entry == "ema" and set(state) == set(model.state_dict())


SOURCES = [p for pkg in ("groupdiff", "flows", "registry", "bench", "infra") for p in (ROOT / pkg).rglob("*.py")]


def test_no_loader_in_the_tree_unpickles():
    """Every ``torch.load`` passes ``weights_only=True``; nothing uses pickle/cloudpickle/joblib loading or
    ``np.load(allow_pickle=True)`` (np.load's default refuses pickles)."""
    problems = []
    for path in SOURCES:
        text = path.read_text()
        for line in text.splitlines():  # every call in the tree is on one line
            if "torch.load(" in line and "weights_only=True" not in line:
                problems.append(f"{path.relative_to(ROOT)}: {line.strip()}")
        for bad in ("allow_pickle=True", "pickle.load", "import cloudpickle", "joblib.load", "import dill"):
            if bad in text:
                problems.append(f"{path.relative_to(ROOT)}: {bad}")
    assert not problems, problems


def test_a_safetensors_file_is_recognised_by_its_content_whatever_its_name(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, str(tmp_path / "weights.st"))
    torch.testing.assert_close(load_tensor_file(tmp_path / "weights.st", "test weights")["w"], tensors["w"])
