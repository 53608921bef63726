"""Inception score and precision / recall (k-NN manifold estimate) from feature / logit arrays.

Both work on any feature space: InceptionV3 (``is``, ``precision``, ``recall``) or the built-in
classifier (``is_fmnist``, ...). Written here because they are a few lines of array maths over features
we already extracted in one pass; torch-fidelity's versions re-run their own extraction.

Inception score (Salimans et al. 2016, as in the ADM evaluator): ``exp(E_x KL(p(y|x) || p(y)))`` over
``splits`` equal chunks, reported as the mean over chunks (ADM uses 10 splits on 50K samples).

Precision / recall (Kynkäänniemi et al. 2019): the manifold of a set is the union of balls around each
of its points with radius = distance to its k-th nearest neighbour in the same set (k=3). Precision =
fraction of generated samples inside the real manifold; recall = fraction of real samples inside the
generated manifold. Distances are computed exactly in row blocks (no approximate search).
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_K = 3


def inception_score(logits: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """(mean, std) over ``splits`` chunks of ``exp(mean KL(p(y|x) || p(y)))``; ``logits`` is (N, classes).

    A classifier that outputs the same distribution for every image scores 1; a confident one-hot
    classifier over ``C`` equally frequent classes scores ``C``.
    """
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(x.shape)}")
    if splits < 1 or x.shape[0] < splits:
        raise ValueError(f"splits={splits} must be between 1 and the number of samples {x.shape[0]}")
    log_p = torch.log_softmax(x, dim=1)
    scores = []
    for chunk in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(chunk, dim=0) - np.log(chunk.shape[0])
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    if x.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples for the k-NN manifold, got {x.shape[0]}")
    radii = []
    for start in range(0, x.shape[0], block):
        d = torch.cdist(x[start : start + block], x)
        # index 0 of the sorted row is the point itself (distance 0)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_manifold(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    """Boolean per query: within ``radii[j]`` of some ``points[j]``."""
    inside = []
    for start in range(0, queries.shape[0], block):
        d = torch.cdist(queries[start : start + block], points)
        inside.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = DEFAULT_K, block: int = 1024,
    device: str = "cpu",
) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` with k-NN manifolds (see module doc).

    Distances are float64 on ``device`` (a GPU makes 50K x 50K feasible), ``block`` rows at a time.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float64, device=device)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float64, device=device)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"features must be (N, D) arrays of one width, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    real_radii = _kth_neighbour_radii(real, k, block)
    fake_radii = _kth_neighbour_radii(fake, k, block)
    precision = _inside_manifold(fake, real, real_radii, block).double().mean()
    recall = _inside_manifold(real, fake, fake_radii, block).double().mean()
    return float(precision), float(recall)
