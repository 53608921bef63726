"""The ``score`` stage: a samples ``.npz`` -> a metrics JSON, one feature pass per feature space.

Spaces: ``inception`` (FID, sFID, IS, precision, recall against an ADM reference batch; needs the FID
InceptionV3 weights) and ``fmnist`` (``fd_fmnist``, ``is_fmnist``, ``precision_fmnist``,
``recall_fmnist`` against the built-in test split; needs the built-in classifier). The JSON also holds
the evaluation context read from the sample stage's ``sample.json`` (mode, group size, cfg scale,
sampler) and the mean S_cross of the samples, so ``groupdiff report`` can tabulate and plot runs.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..config_base import Section
from .evaluate import compute_metrics
from .fidelity import DEFAULT_K
from .frechet import DEFAULT_EPS
from .npz import read_samples_npz
from .reference import FeatureSpace, ReferenceStats, inception_space, load_reference


class ScoreConfig(Section):
    """How to score a samples file."""

    samples: str = Field(..., min_length=1, description="Samples .npz (arr_0 uint8 NHWC).")
    out: str = Field("", description="Metrics JSON path (default: metrics.json beside the samples).")
    spaces: list[Literal["inception", "fmnist"]] = Field(
        default_factory=lambda: ["fmnist"], min_length=1, description="Feature spaces to score in."
    )
    reference: str = Field("", description="ADM reference batch .npz (required for 'inception').")
    inception_weights: str = Field("", description="FID InceptionV3 weights (path or file:// URI).")
    classifier_weights: str = Field("", description="Built-in classifier .safetensors (for 'fmnist').")
    fmnist_reference_limit: int = Field(0, ge=0, description="Use the first N test images as reference (0 = all).")
    cache_dir: str = Field("", description="Where reference statistics are cached (empty = no cache).")
    pr_k: int = Field(DEFAULT_K, ge=1, le=100, description="k of the k-NN manifolds for precision/recall.")
    is_splits: int = Field(1, ge=1, le=100, description="Inception-score splits (ADM reports 10 on 50K).")
    eps: float = Field(DEFAULT_EPS, gt=0.0, le=1.0, description="Covariance offset for ill-conditioned Fréchet.")
    fd_method: Literal["sqrtm", "eigh"] = Field(
        "eigh", description="Fréchet trace term: 'eigh' (symmetric eigendecompositions, exact low-rank route for "
        "fewer samples than dimensions; same value to rounding, seconds faster) or 'sqrtm' (scipy sqrtm, as ADM)."
    )
    batch_size: int = Field(64, ge=1, le=65_536, description="Images per feature-extractor batch.")
    device: str = Field("cpu", min_length=1, description="torch device of the feature extractors.")


def _space_and_reference(name: str, config: ScoreConfig, image_size: int) -> tuple[FeatureSpace, ReferenceStats]:
    cache = config.cache_dir or None
    if name == "inception":
        if not config.reference:
            raise ValueError("the 'inception' space needs --reference: an ADM reference batch .npz")
        space = inception_space(config.inception_weights or None, config.device, config.batch_size)
        reference = load_reference(config.reference, space, cache)
        return space, reference
    from .builtin import classifier_space, fmnist_reference

    if not config.classifier_weights:
        raise FileNotFoundError(
            "the 'fmnist' space needs --classifier-weights: train it with `groupdiff train-classifier`"
        )
    space = classifier_space(config.classifier_weights, config.device, config.batch_size)
    if config.reference:
        return space, load_reference(config.reference, space, cache)
    return space, fmnist_reference(space, image_size, limit=config.fmnist_reference_limit, cache_dir=cache)


def sample_context(samples: Path) -> dict:
    """Mode, group size, cfg scale and sampler of a samples file written by the sample stage (if known)."""
    folder = samples.parent.parent
    record_path = folder / "sample.json"
    if not record_path.is_file():  # a sharded run writes one record per rank: they share the config
        ranks = sorted(folder.glob("sample.rank*.json"))
        if not ranks:
            return {}
        record_path = ranks[0]
    record = json.loads(record_path.read_text())
    config = record.get("config", {})
    guidance, sampler = config.get("guidance", {}), config.get("sampler", {})
    cfg_scale = guidance.get("cfg_scale")
    folder = samples.parent.name
    if folder.startswith("cfg"):
        try:
            cfg_scale = float(folder[3:])
        except ValueError:
            pass
    return {"mode": guidance.get("mode"), "group_size": guidance.get("group_size"), "cfg_scale": cfg_scale,
            "sampler": sampler.get("method"), "num_steps": sampler.get("num_steps"), "seed": sampler.get("seed"),
            "interval": [guidance.get("interval_low"), guidance.get("interval_high")],
            "grid": str(samples.parent / "grid.png") if (samples.parent / "grid.png").is_file() else None}


def run(config: ScoreConfig, spaces: dict[str, tuple[FeatureSpace, ReferenceStats]] | None = None) -> dict:
    """Score ``config.samples``; ``spaces`` may supply ready (space, reference) pairs (tests, benchmarks)."""
    samples_path = Path(config.samples)
    batch = read_samples_npz(samples_path)
    images = batch.images
    started = time.time()
    metrics: dict[str, float] = {}
    for name in config.spaces:
        space, reference = (spaces or {}).get(name) or _space_and_reference(name, config, images.shape[1])
        if reference.image_size is not None and tuple(reference.image_size) != tuple(images.shape[1:3]):
            # InceptionV3 resizes everything to 299, but statistics of different resolutions are not comparable
            raise ValueError(
                f"samples are {images.shape[1]}x{images.shape[2]} but the {name} reference images are "
                f"{reference.image_size[0]}x{reference.image_size[1]}; sample at the reference resolution"
            )
        if len(images) <= config.pr_k:
            raise ValueError(f"{len(images)} samples are too few to score (need more than pr_k={config.pr_k})")
        metrics.update(compute_metrics(space(images), reference, space.name, config.pr_k, config.is_splits,
                                       config.eps, config.fd_method, config.device))
    s_cross = batch.extras.get("s_cross")
    if s_cross is not None and np.isfinite(s_cross).any():
        metrics["s_cross"] = float(np.nanmean(s_cross))
    result = {
        "samples": str(samples_path), "num_samples": int(len(images)),
        "image_size": list(images.shape[1:3]), "metrics": metrics, "context": sample_context(samples_path),
        "score_config": config.model_dump(), "seconds": time.time() - started,
    }
    out = Path(config.out) if config.out else samples_path.with_name("metrics.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_json_default))
    tmp.replace(out)
    result["path"] = str(out)
    return result


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
