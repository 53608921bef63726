"""Evaluation metrics (DESIGN 1.6): Fréchet distance, Inception score, precision/recall, feature spaces.

- :mod:`.frechet`    the Fréchet distance (plain maths) and feature statistics;
- :mod:`.fidelity`   Inception score and k-NN precision/recall from logits / features;
- :mod:`.inception`  InceptionV3 pool3 / spatial / logits in one pass (torch-fidelity's FID port);
- :mod:`.builtin`    the same metrics in the built-in classifier's space (``fd_fmnist``, ...);
- :mod:`.reference`  reference statistics (ADM reference batches), cached by digest;
- :mod:`.npz`        ADM-compatible sample files;
- :mod:`.score`      the ``score`` stage (samples .npz -> metrics JSON).
"""
from __future__ import annotations

from .evaluate import compute_metrics, metric_names
from .fidelity import inception_score, precision_recall
from .frechet import FeatureStats, feature_stats, frechet_distance, stats_distance
from .npz import SampleBatch, read_samples_npz, to_uint8_nhwc, write_samples_npz

__all__ = [
    "FeatureStats", "feature_stats", "frechet_distance", "stats_distance", "inception_score", "precision_recall",
    "compute_metrics", "metric_names", "SampleBatch", "read_samples_npz", "write_samples_npz", "to_uint8_nhwc",
]
