"""MLflow behind ``groupdiff.tracking.Tracker``: rank 0 logs to a given run (``MLFLOW_RUN_ID``).

Logging goes through :class:`mlflow.MlflowClient` with an explicit run id, so a training subprocess
attaches to the run its flow opened without touching MLflow's global "active run" state. Other ranks
get a :class:`~groupdiff.tracking.NullTracker` from :func:`make_tracker`. Launched training ranks get it
through :func:`run_tracker`, which ``$GROUPDIFF_TRACKER`` names.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from groupdiff.tracking import NullTracker, Tracker, flatten

PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
METRICS_PER_BATCH = 1000
PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value's length
PARENT_TAG = "mlflow.parentRunId"


def rank_from_env() -> int:
    """Global rank of this process (``RANK`` as set by torchrun/deepspeed; 0 when absent)."""
    value = os.environ.get("RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"RANK={value!r} is not an integer") from None


def start_run(client: MlflowClient, experiment: str, run_name: str | None = None,
              parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` when given) in ``experiment`` (created if missing)."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    all_tags = dict(tags or {})
    if parent_run_id:
        client.get_run(parent_run_id)  # clear error if the parent does not exist
        all_tags[PARENT_TAG] = parent_run_id
    return client.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id


class MlflowTracker:
    """A :class:`~groupdiff.tracking.Tracker` logging to one MLflow run.

    ``run_id`` None -> ``$MLFLOW_RUN_ID``; if that is unset too, a new run is created in ``experiment``
    and ended by :meth:`close` (an attached run is left for its owner to end).
    """

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None, experiment: str = "groupdiff",
                 run_name: str | None = None, system_metrics: bool = False, system_metrics_interval_s: float = 10.0):
        self.client = MlflowClient(tracking_uri)
        run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
        self.owns_run = run_id is None
        if run_id is None:
            run_id = start_run(self.client, experiment, run_name)
        else:
            try:
                self.client.get_run(run_id)
            except MlflowException as exc:
                raise ValueError(f"MLflow run {run_id!r} does not exist at {self.client.tracking_uri}: {exc.message}") from None
        self.run_id = run_id
        self._monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(run_id, sampling_interval=system_metrics_interval_s,
                                                 resume_logging=not self.owns_run,
                                                 tracking_uri=self.client.tracking_uri)
            self._monitor.start()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened ``section.field`` params (a dict or a pydantic config; values stringified, truncated to
        MLflow's limit)."""
        if hasattr(params, "model_dump"):
            params = params.model_dump(mode="json")
        items = [Param(k, str(v)[:PARAM_VALUE_MAX]) for k, v in flatten(dict(params)).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + METRICS_PER_BATCH])

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """Upload a file; ``name`` is its artefact path (e.g. ``samples/grid.png``), default its file name."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot log artefact {path}: not a file")
        target = name or path.name
        folder, _, filename = target.rpartition("/")
        if filename == path.name:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            renamed = Path(tmp) / filename
            shutil.copyfile(path, renamed)
            self.client.log_artifact(self.run_id, str(renamed), artifact_path=folder or None)

    def log_image(self, image, name: str) -> None:
        """An image (HWC uint8/float array or PIL image) as artefact ``name`` (e.g. ``grids/step100.png``)."""
        self.client.log_image(self.run_id, image, artifact_file=name)

    def log_figure(self, figure, name: str) -> None:
        """A matplotlib figure (plot) as artefact ``name``."""
        self.client.log_figure(self.run_id, figure, artifact_file=name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Run tags (strings)."""
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def close(self, status: str = "FINISHED") -> None:
        """Stop system metrics; end the run if this tracker created it."""
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if self.owns_run:
            self.client.set_terminated(self.run_id, status)


def make_tracker(rank: int | None = None, **kwargs) -> Tracker:
    """:class:`MlflowTracker` on rank 0, :class:`~groupdiff.tracking.NullTracker` elsewhere."""
    rank = rank_from_env() if rank is None else rank
    return MlflowTracker(**kwargs) if rank == 0 else NullTracker()


def run_tracker(run_dir: str | Path) -> Tracker:
    """The training ranks' plugged-in tracker: ``GROUPDIFF_TRACKER=registry.mlflow_tracker:run_tracker``
    (set by the training flow; see :mod:`groupdiff.train_worker`). Rank 0 logs to ``$MLFLOW_RUN_ID`` at
    ``$MLFLOW_TRACKING_URI``; the run folder is not needed, the run id names where the records go."""
    return make_tracker(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
