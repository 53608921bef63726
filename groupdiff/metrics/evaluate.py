"""All metrics of one sample set against one reference, from a single feature pass.

Names: in the InceptionV3 space the paper names ``fid``, ``sfid``, ``is``, ``precision``, ``recall``;
in any other space the Fréchet distance is called ``fd_<space>`` (never "FID", which means InceptionV3
pool3 on ImageNet-style references), likewise ``sfd_<space>``, ``is_<space>``, ``precision_<space>``,
``recall_<space>``.
"""
from __future__ import annotations

import numpy as np

from .fidelity import DEFAULT_K, inception_score, precision_recall
from .frechet import DEFAULT_EPS, features_distance
from .reference import ReferenceStats

INCEPTION = "inception"


def metric_names(space: str) -> dict[str, str]:
    """Map generic quantity -> reported name in ``space`` (see the module docstring)."""
    if space == INCEPTION:
        return {"fd": "fid", "sfd": "sfid", "is": "is", "precision": "precision", "recall": "recall"}
    return {q: f"{q}_{space}" for q in ("fd", "sfd", "is", "precision", "recall")}


def compute_metrics(
    features: dict[str, np.ndarray],
    reference: ReferenceStats,
    space: str,
    k: int = DEFAULT_K,
    is_splits: int = 1,
    eps: float = DEFAULT_EPS,
    fd_method: str = "eigh",
    device: str = "cpu",
) -> dict[str, float]:
    """Fréchet distance(s), Inception score and precision/recall of ``features`` against ``reference``.

    sFID is computed when both sides have spatial features; precision/recall when the reference kept
    its pool features (it had images). Missing ones are simply absent from the result.
    """
    names = metric_names(space)
    pool = np.asarray(features["pool"], np.float64)
    if pool.shape[1] != reference.pool.mu.shape[0]:
        raise ValueError(
            f"sample features have {pool.shape[1]} dims but the reference statistics have "
            f"{reference.pool.mu.shape[0]}: were they made in another feature space than {space!r}?"
        )
    out = {names["fd"]: features_distance(pool, reference.pool, eps=eps, method=fd_method)}
    if "spatial" in features and reference.spatial is not None:
        out[names["sfd"]] = features_distance(features["spatial"], reference.spatial, eps=eps, method=fd_method)
    if "logits" in features:
        out[names["is"]] = inception_score(features["logits"], splits=is_splits)[0]
    if reference.pool_features is not None:
        precision, recall = precision_recall(reference.pool_features, pool, k=k, device=device)
        out[names["precision"]], out[names["recall"]] = precision, recall
    return out
