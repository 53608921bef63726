"""The MLflow pyfunc flavour of a GroupDiff model: class labels + a group size in, images out.

The saved model holds the weights (``weights.safetensors``) and ``config.json`` (the ``model``,
``sampler`` and ``guidance`` sections). It is logged as models-from-code (``registry/pyfunc_code.py``),
not as a cloudpickled object: loading it runs that file and reads tensors, never unpickles code.
``predict`` takes a DataFrame with one ``label`` per group and generates ``group_size`` images per label
with :func:`groupdiff.sample.generate.generate`; the output is a float32 array
``(groups * group_size, C, H, W)`` in the data range (about [-1, 1]).
Per-call params: ``group_size``, ``num_steps``, ``seed``, ``cfg_scale``, ``mode``.
"""
from __future__ import annotations

import json
import warnings
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from groupdiff.config import GuidanceConfig, ModelConfig, SamplerConfig
from groupdiff.safeload import load_tensor_file

WEIGHTS = "weights"
CONFIG = "config"
MODEL_CODE = Path(__file__).with_name("pyfunc_code.py")  # calls mlflow.models.set_model(GroupDiffPyfunc())


def signature(model_config: ModelConfig, sampler: SamplerConfig, guidance: GuidanceConfig) -> ModelSignature:
    """Input: a ``label`` column (one row per group); output: images; params with the saved defaults."""
    c, s = model_config.in_channels, model_config.input_size
    return ModelSignature(
        inputs=Schema([ColSpec("long", "label")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, s, s))]),
        params=ParamSchema([
            ParamSpec("group_size", "long", guidance.group_size),
            ParamSpec("num_steps", "long", sampler.num_steps),
            ParamSpec("seed", "long", sampler.seed),
            ParamSpec("cfg_scale", "double", guidance.cfg_scale),
            ParamSpec("mode", "string", guidance.mode),
        ]),
    )


def build_configs(saved: dict[str, Any], params: dict[str, Any] | None) -> tuple[SamplerConfig, GuidanceConfig]:
    """Sampler and guidance configs of one call: the saved ones with ``params`` applied (validated)."""
    params = params or {}
    sampler = SamplerConfig.model_validate(saved["sampler"])
    guidance = GuidanceConfig.model_validate(saved["guidance"])
    sampler = sampler.model_copy(update={k: int(params[k]) for k in ("num_steps", "seed") if k in params})
    update: dict[str, Any] = {}
    if "group_size" in params:
        update["group_size"] = int(params["group_size"])
    if "cfg_scale" in params:
        update["cfg_scale"] = float(params["cfg_scale"])
    # MLflow fills every param the signature declares with its saved default, so a mode equal to the saved one
    # counts as not given: a baseline model asked for a group then samples it with GroupDiff-l (below)
    if "mode" in params and str(params["mode"]) != guidance.mode:
        update["mode"] = str(params["mode"])
    if update.get("group_size", guidance.group_size) > 1 and update.get("mode", guidance.mode) == "baseline":
        update.setdefault("mode", "groupdiff-l")  # a group needs a GroupDiff mode; -l is the paper's default
    guidance = GuidanceConfig.model_validate({**guidance.model_dump(), **update})
    SamplerConfig.model_validate(sampler.model_dump())
    return sampler, guidance


def generate_groups(model: torch.nn.Module, group_labels, sampler: SamplerConfig, guidance: GuidanceConfig,
                    image_size: int) -> np.ndarray:
    """``group_size`` images for each label in ``group_labels``: float32 ``(G*N, C, S, S)``."""
    from groupdiff.sample.generate import generate

    labels = torch.as_tensor(np.array(group_labels, dtype=np.int64)).repeat_interleave(guidance.group_size)
    images = generate(model, labels, sampler, guidance, (model.in_channels, image_size, image_size))
    return images.float().cpu().numpy()


# MLflow warns at class creation when predict() has no type hints; ours are omitted deliberately (see below).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*", category=UserWarning)

    class GroupDiffPyfunc(mlflow.pyfunc.PythonModel):
        """Loads the SiT from the model's artefacts and samples groups of images per label.

        ``predict`` has no type hints on purpose: the explicit :func:`signature` validates inputs and params
        (MLflow would otherwise infer a competing schema from the hints).
        """

        def load_context(self, context) -> None:
            from groupdiff.models import build_model

            self.saved = json.loads(Path(context.artifacts[CONFIG]).read_text())
            self.model_config = ModelConfig.model_validate(self.saved["model"])
            self.model = build_model(self.model_config)
            # safetensors (models logged before it: weights.pt, read weights-only)
            state = load_tensor_file(context.artifacts[WEIGHTS], f"the {self.model_config.name} weights of this model")
            self.model.load_state_dict(state)
            self.model.eval()

        def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
            labels = np.asarray(model_input["label"]) if hasattr(model_input, "columns") else np.asarray(model_input)
            if labels.ndim != 1 or labels.size == 0:
                raise ValueError(f"expected a non-empty 'label' column (one label per group), got shape {labels.shape}")
            sampler, guidance = build_configs(self.saved, params)
            return generate_groups(self.model, labels, sampler, guidance, self.model_config.input_size)


def save_artifacts(folder: Path, model: torch.nn.Module, model_config: ModelConfig, sampler: SamplerConfig,
                   guidance: GuidanceConfig) -> dict[str, str]:
    """Write weights and configs to ``folder``; returns the pyfunc ``artifacts`` mapping."""
    from safetensors.torch import save_file

    weights = folder / "weights.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    config = folder / "config.json"
    config.write_text(json.dumps({
        "model": model_config.model_dump(), "sampler": sampler.model_dump(), "guidance": guidance.model_dump(),
    }, indent=2))
    return {WEIGHTS: str(weights), CONFIG: str(config)}


def log_groupdiff_model(model: torch.nn.Module, model_config: ModelConfig, sampler: SamplerConfig,
                        guidance: GuidanceConfig, name: str = "model",
                        registered_model_name: str | None = None):
    """Log the model as a pyfunc in the active MLflow run (optionally registering it); returns the ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # no input_example on purpose: MLflow would run a full sampling pass on it while logging
        warnings.filterwarnings("ignore", message=".*input example was not provided.*", category=UserWarning)
        artifacts = save_artifacts(Path(tmp), model, model_config, sampler, guidance)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),  # models-from-code: MLflow stores and runs this file, pickles nothing
            artifacts=artifacts,
            signature=signature(model_config, sampler, guidance),
            registered_model_name=registered_model_name,
            # explicit requirements: inference would import the model in a subprocess (slow, needs no network)
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "groupdiff"],
        )
