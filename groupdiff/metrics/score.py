"""The ``score`` stage: a samples ``.npz`` -> a metrics JSON, one feature pass per feature space.

Spaces: ``inception`` (FID, sFID, IS, precision, recall against an ADM reference batch; needs the FID
InceptionV3 weights) and ``fmnist`` (``fd_fmnist``, ``is_fmnist``, ``precision_fmnist``,
``recall_fmnist`` and ``class_agreement`` against the built-in test split; needs the built-in
classifier, whose test accuracy is reported as ``classifier_test_accuracy``). Every Fréchet distance
gets a bootstrap interval (``<fd>_ci_low`` / ``<fd>_ci_high``, ``fd_bootstrap`` resamples of the samples).
In the ``fmnist`` space with the built-in reference, the same metrics of a held-out real set of the
same size and class balance (the **real-data floor**, disjoint from the reference) go to ``floor``.
The JSON also holds the evaluation context read from the sample stage's ``sample.json`` (mode, group
size, cfg scale, sampler, which checkpoint weights) and the mean S_cross of the samples, so
``groupdiff report`` can tabulate and plot runs.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
from pydantic import Field

from ..atomic import write_json_atomic
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
    reference: str = Field("", description="ADM reference batch .npz, or a pixel dataset version (folder or s3://) "
                           "from `groupdiff ingest` (required for 'inception').")
    inception_weights: str = Field("", description="FID InceptionV3 weights (path or file:// URI).")
    classifier_weights: str = Field("", description="Built-in classifier .safetensors (for 'fmnist').")
    fmnist_reference_limit: int = Field(
        5000, ge=0, description="Use the first N test images as reference (0 = all 10k, which leaves none for the "
        "real-data floor); the floor draws from the images after them."
    )
    real_floor: bool = Field(
        True, description="'fmnist' space with the built-in reference: also score a held-out real set of the "
        "samples' size and class balance (test images after the reference) as the real-data floor."
    )
    fd_bootstrap: int = Field(
        200, ge=0, le=100_000, description="Resamples (with replacement) of the samples for the fd interval (0 = none). "
        "Each costs one covariance of the sample features: milliseconds for 400 x 128 (fmnist), seconds for "
        "50K x 2048 (Inception), where fewer (or 0) keep scoring fast."
    )
    fd_interval: float = Field(0.95, gt=0.0, lt=1.0, description="Coverage of the bootstrap fd interval.")
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the bootstrap resampling.")
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
    weights = record.get("weights") or record.get("stage", {}).get("weights")
    return {"weights": weights, "mode": guidance.get("mode"), "group_size": guidance.get("group_size"), "cfg_scale": cfg_scale,
            "sampler": sampler.get("method"), "num_steps": sampler.get("num_steps"), "seed": sampler.get("seed"),
            "interval": [guidance.get("interval_low"), guidance.get("interval_high")],
            "grid": str(samples.parent / "grid.png") if (samples.parent / "grid.png").is_file() else None}


def _metrics_of(images: np.ndarray, labels: np.ndarray, space: FeatureSpace, reference: ReferenceStats,
                config: ScoreConfig, bootstrap: int) -> dict[str, float]:
    return compute_metrics(space(images), reference, space.name, config.pr_k, config.is_splits, config.eps,
                           config.fd_method, config.device, labels=labels, bootstrap=bootstrap,
                           interval=config.fd_interval, bootstrap_seed=config.bootstrap_seed)


def real_floor(config: ScoreConfig, space: FeatureSpace, reference: ReferenceStats, num_images: int,
               labels: np.ndarray | None, image_size: int) -> tuple[dict[str, float], dict]:
    """The metrics of the held-out real set (:func:`~groupdiff.metrics.builtin.fmnist_floor_images`) and
    where its images came from: ``num_images`` images with the class balance of ``labels`` (if given),
    disjoint from the reference. ``class_agreement`` of the floor is the classifier's accuracy on it."""
    from .builtin import fmnist_floor_images

    images, floor_labels, indices = fmnist_floor_images(image_size, config.fmnist_reference_limit, num_images, labels)
    metrics = _metrics_of(images, floor_labels, space, reference, config, bootstrap=0)
    info = {"source": "fmnist test split", "num_images": int(len(indices)), "first_index": int(indices.min()),
            "last_index": int(indices.max()), "reference_images": config.fmnist_reference_limit}
    return metrics, info


class ScoreResult(TypedDict, total=False):
    """What the score stage returns (and writes to ``metrics.json``, less ``path``): a plain dict, JSON as it is."""

    samples: str  # the scored .npz
    num_samples: int
    image_size: list[int]
    metrics: dict[str, float]  # fd/sfid/is/precision/recall per space, class_agreement, fd intervals, s_cross
    floor: dict[str, float]  # the same metrics for held-out real images of the samples' size (fmnist space)
    floor_info: dict[str, Any]  # which real images the floor used
    classifier: dict[str, Any]  # the fmnist-space classifier's record (test accuracy)
    context: dict[str, Any]  # the samples' sample.json: weights, mode, N, cfg scale
    score_config: dict[str, Any]
    seconds: float
    path: str  # where metrics.json was written


def run(config: ScoreConfig, spaces: dict[str, tuple[FeatureSpace, ReferenceStats]] | None = None) -> ScoreResult:
    """Score ``config.samples``; ``spaces`` may supply ready (space, reference) pairs (tests, benchmarks)."""
    samples_path = Path(config.samples)
    batch = read_samples_npz(samples_path)
    images = batch.images
    started = time.time()
    metrics: dict[str, float] = {}
    floor: dict[str, float] = {}
    extra: dict[str, dict] = {}
    if "fmnist" in config.spaces and config.real_floor and not config.reference:
        from .builtin import fmnist_floor_images

        # pick (and check) the floor's held-out images before any feature pass
        fmnist_floor_images(images.shape[1], config.fmnist_reference_limit, len(images), batch.labels)
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
        metrics.update(_metrics_of(images, batch.labels, space, reference, config, config.fd_bootstrap))
        if name == "fmnist":
            if config.classifier_weights:
                from .builtin import classifier_record

                extra["classifier"] = classifier_record(config.classifier_weights)
                if extra["classifier"]["test_accuracy"] is not None:
                    metrics["classifier_test_accuracy"] = float(extra["classifier"]["test_accuracy"])
            if config.real_floor and not config.reference:
                floor, extra["floor_info"] = real_floor(config, space, reference, len(images), batch.labels,
                                                       images.shape[1])
    s_cross = batch.extras.get("s_cross")
    if s_cross is not None and np.isfinite(s_cross).any():
        metrics["s_cross"] = float(np.nanmean(s_cross))
    result: ScoreResult = {
        "samples": str(samples_path), "num_samples": int(len(images)),
        "image_size": list(images.shape[1:3]), "metrics": metrics, "floor": floor, **extra,
        "context": sample_context(samples_path),
        "score_config": config.model_dump(), "seconds": time.time() - started,
    }
    out = Path(config.out) if config.out else samples_path.with_name("metrics.json")
    write_json_atomic(out, result, default=_json_default)
    result["path"] = str(out)
    return result


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
