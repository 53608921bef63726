"""All metrics of one sample set against one reference, from a single feature pass.

Names: in the InceptionV3 space the paper names ``fid``, ``sfid``, ``is``, ``precision``, ``recall``;
in any other space the Fréchet distance is called ``fd_<space>`` (never "FID", which means InceptionV3
pool3 on ImageNet-style references), likewise ``sfd_<space>``, ``is_<space>``, ``precision_<space>``,
``recall_<space>``. With a bootstrap, ``<fd>_ci_low`` / ``<fd>_ci_high`` bound the Fréchet distance.
In a classifier space (not InceptionV3, whose 1008 logits are not the samples' classes) with the
samples' labels, ``class_agreement`` is the fraction of images the classifier assigns to the class they
were conditioned on (:func:`class_agreement`).
"""
from __future__ import annotations

import numpy as np

from .fidelity import DEFAULT_K, inception_score, precision_recall
from .frechet import DEFAULT_EPS, bootstrap_interval, features_distance
from .reference import ReferenceStats

INCEPTION = "inception"


def metric_names(space: str) -> dict[str, str]:
    """Map generic quantity -> reported name in ``space`` (see the module docstring)."""
    if space == INCEPTION:
        return {"fd": "fid", "sfd": "sfid", "is": "is", "precision": "precision", "recall": "recall"}
    return {q: f"{q}_{space}" for q in ("fd", "sfd", "is", "precision", "recall")}


CLASS_AGREEMENT = "class_agreement"


def class_agreement(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max logit is their label: the classifier's accuracy on these images
    against the class each was conditioned on (chance = 1 / classes for a class-balanced set)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"need logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}] but the classifier has {logits.shape[1]} classes")
    return float((logits.argmax(axis=1) == labels).mean())


def compute_metrics(
    features: dict[str, np.ndarray],
    reference: ReferenceStats,
    space: str,
    k: int = DEFAULT_K,
    is_splits: int = 1,
    eps: float = DEFAULT_EPS,
    fd_method: str = "eigh",
    device: str = "cpu",
    labels: np.ndarray | None = None,
    bootstrap: int = 0,
    interval: float = 0.95,
    bootstrap_seed: int = 0,
) -> dict[str, float]:
    """Fréchet distance(s), Inception score and precision/recall of ``features`` against ``reference``.

    sFID is computed when both sides have spatial features; precision/recall when the reference kept
    its pool features (it had images); ``class_agreement`` with ``labels`` in a classifier space; the
    fd interval (:func:`~groupdiff.metrics.frechet.bootstrap_interval`, level ``interval``) with
    ``bootstrap`` > 0 resamples. Missing ones are simply absent from the result.
    """
    names = metric_names(space)
    pool = np.asarray(features["pool"], np.float64)
    if pool.shape[1] != reference.pool.mu.shape[0]:
        raise ValueError(
            f"sample features have {pool.shape[1]} dims but the reference statistics have "
            f"{reference.pool.mu.shape[0]}: were they made in another feature space than {space!r}?"
        )
    out = {names["fd"]: features_distance(pool, reference.pool, eps=eps, method=fd_method)}
    if bootstrap:
        low, high = bootstrap_interval(pool, reference.pool, bootstrap, interval, bootstrap_seed, eps, fd_method)
        out[f"{names['fd']}_ci_low"], out[f"{names['fd']}_ci_high"] = low, high
    if "spatial" in features and reference.spatial is not None:
        out[names["sfd"]] = features_distance(features["spatial"], reference.spatial, eps=eps, method=fd_method)
    if "logits" in features:
        out[names["is"]] = inception_score(features["logits"], splits=is_splits)[0]
    if reference.pool_features is not None:
        precision, recall = precision_recall(reference.pool_features, pool, k=k, device=device)
        out[names["precision"]], out[names["recall"]] = precision, recall
    if labels is not None and "logits" in features and space != INCEPTION:
        out[CLASS_AGREEMENT] = class_agreement(features["logits"], labels)
    return out
