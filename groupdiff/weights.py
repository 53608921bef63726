"""Which weights of a training checkpoint are used: ``ema`` or ``raw`` (torch-free, so the CLI stays fast).

A checkpoint written by ``groupdiff train`` holds both: ``model.safetensors`` (the EMA of the weights,
see ``train.ema_*``) and ``weights.safetensors`` (the optimizer's raw weights). Sampling, scoring
records, the pipeline and ``evaluate-model`` name the choice with these values.
"""
from __future__ import annotations

from typing import Literal

Weights = Literal["ema", "raw"]
DEFAULT_WEIGHTS: Weights = "ema"
EMA_FILE = "model.safetensors"
RAW_FILE = "weights.safetensors"
WEIGHT_FILES: dict[str, str] = {"ema": EMA_FILE, "raw": RAW_FILE}
WEIGHTS_DESCRIPTION = (
    "Which weights of a training checkpoint are used: 'ema' (model.safetensors, the EMA) or 'raw' "
    "(weights.safetensors, the optimizer's weights)."
)
