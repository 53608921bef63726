"""The MLflow model is logged as models-from-code with safetensors weights, and loads back to the same images.

Runs on a local SQLite tracking store in a temp folder (no servers): the registered model's MLmodel names
the code file (``model_code_path``) and no cloudpickled ``python_model``, the folder holds no pickle, the
weights are a safetensors file; ``models:/<name>@champion`` samples what the original model samples. A
weights artefact replaced by a pickle carrying code is refused on load and its code never runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from groupdiff.config import GuidanceConfig, ModelConfig, SamplerConfig
from groupdiff.models import build_model
from groupdiff.safeload import CheckpointError
from registry.mlflow_model import CONFIG, WEIGHTS, GroupDiffPyfunc, build_configs, generate_groups, log_groupdiff_model

MODEL = ModelConfig(name="custom", depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=8, in_channels=1,
                    num_classes=3, learn_sigma=False, max_group_size=4)
SAMPLER = SamplerConfig(method="ode-euler", num_steps=2, seed=0)
GUIDANCE = GuidanceConfig(mode="groupdiff-l", group_size=2, cfg_scale=1.5)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A model logged and registered (alias champion) in a local tracking store: (model, model folder, name)."""
    root = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("gd", artifact_location=(root / "artifacts").as_uri())
        torch.manual_seed(1)
        model = build_model(MODEL)
        with torch.no_grad():  # adaLN-zero init outputs zeros; perturb so the images depend on the weights
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        with mlflow.start_run(experiment_id=experiment):
            info = log_groupdiff_model(model.eval(), MODEL, SAMPLER, GUIDANCE, registered_model_name="gd-local")
        MlflowClient().set_registered_model_alias("gd-local", "champion", "1")
        folder = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "download")))
        yield model, folder, "gd-local"
    finally:
        mlflow.set_tracking_uri(None)


def test_logged_as_models_from_code_with_safetensors_weights(logged):
    model, folder, _ = logged
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor, "a cloudpickled python_model was logged"
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(flavor["model_code_path"]).name == "pyfunc_code.py" and (folder / "pyfunc_code.py").is_file()
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".pth", ".bin")]
    assert flavor["artifacts"][WEIGHTS]["path"].endswith(".safetensors")
    weights = load_file(str(folder / flavor["artifacts"][WEIGHTS]["path"]))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_the_champion_loads_and_samples_the_same_images(logged):
    model, _, name = logged
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    params = {"group_size": 2, "seed": 3, "num_steps": 2}
    images = loaded.predict(pd.DataFrame({"label": [0, 2]}), params=params)
    sampler, guidance = build_configs({"sampler": SAMPLER.model_dump(), "guidance": GUIDANCE.model_dump()}, params)
    assert images.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(images, generate_groups(model, [0, 2], sampler, guidance, MODEL.input_size),
                               rtol=0, atol=1e-6)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["weights.safetensors", "weights.pt"])
def test_a_pickled_weights_artefact_is_refused_and_never_run(logged, tmp_path, name):
    _, folder, _ = logged
    marker = tmp_path / "PWNED"
    evil = tmp_path / name
    torch.save({"x_embedder.proj.weight": torch.zeros(1), "payload": _Payload(marker)}, evil)
    context = SimpleNamespace(artifacts={WEIGHTS: str(evil), CONFIG: str(folder / "artifacts" / "config.json")})
    with pytest.raises(CheckpointError, match=f"weights file '{evil}'"):
        GroupDiffPyfunc().load_context(context)
    assert not marker.exists()
