"""Which weights of a training checkpoint are used: ``ema`` or ``raw`` (torch-free, so the CLI stays fast).

A checkpoint written by ``groupdiff train`` holds both: ``model.safetensors`` (the EMA of the weights,
see ``train.ema_*``) and ``weights.safetensors`` (the optimizer's raw weights). Sampling, scoring
records, the pipeline and ``evaluate-model`` name the choice with these values.
"""
from __future__ import annotations

from typing import Literal

from .train.checkpoint import CheckpointDir

Weights = Literal["ema", "raw"]  # the keys of CheckpointDir.WEIGHT_FILES
DEFAULT_WEIGHTS: Weights = "ema"
WEIGHTS_DESCRIPTION = (
    f"Which weights of a training checkpoint are used: 'ema' ({CheckpointDir.EMA}, the EMA) or 'raw' "
    f"({CheckpointDir.RAW}, the optimizer's weights)."
)
