"""The run's tracker: ``<run>/metrics.jsonl`` plus an optional plugged-in one (issue 4, item 7).

Launched ranks log to MLflow without ``groupdiff`` importing MLflow: the training flow sets
``GROUPDIFF_TRACKER=registry.mlflow_tracker:run_tracker`` (any ``module:factory``) in their environment;
rank 0 calls ``factory(run_dir)`` and sends every record to both trackers (see :mod:`groupdiff.train_worker`).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..tracking import JsonlTracker, Tracker

TRACKER_ENV = "GROUPDIFF_TRACKER"
METRICS_FILE = "metrics.jsonl"  # rank 0's metric records in the run folder (flows follow it for progress)


class TeeTracker:
    """Sends every call to several trackers (the run's JSONL file and a plugged-in one)."""

    def __init__(self, *trackers: Tracker):
        self.trackers = trackers

    def log_params(self, params):
        for tr in self.trackers:
            tr.log_params(params)

    def log_metrics(self, metrics, step=None):
        for tr in self.trackers:
            tr.log_metrics(metrics, step)

    def log_artifact(self, path, name=None):
        for tr in self.trackers:
            tr.log_artifact(path, name)

    def close(self):
        for tr in self.trackers:
            tr.close()


def default_tracker(run_dir: Path) -> Tracker:
    """``<run>/metrics.jsonl`` (:data:`METRICS_FILE`), plus the tracker ``$GROUPDIFF_TRACKER`` names (how
    ``registry/`` plugs MLflow into launched ranks without ``groupdiff`` importing it)."""
    jsonl = JsonlTracker(run_dir / METRICS_FILE)
    spec = os.environ.get(TRACKER_ENV, "")
    if not spec:
        return jsonl
    try:
        module, _, name = spec.partition(":")
        if not module or not name:
            raise ValueError(f"{TRACKER_ENV}={spec!r}; expected 'module:factory'")
        plugged = getattr(importlib.import_module(module), name)(run_dir)
        if not isinstance(plugged, Tracker):
            raise TypeError(f"{TRACKER_ENV}={spec!r} gave a {type(plugged).__name__}, not a groupdiff.tracking.Tracker")
    except Exception:
        jsonl.close()
        raise
    return TeeTracker(jsonl, plugged)
