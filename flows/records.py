"""Where the flows keep records: object store, MLflow, catalogue and a local work folder, from the environment.

Embedded default (no servers): ``file://<out>/store``, MLflow on ``sqlite:///<out>/mlflow.db`` with
artefacts in ``<out>/mlartifacts``, catalogue ``sqlite:///<out>/catalogue.db``. The local stack and
production set ``GROUPDIFF_STORE_ROOT``, ``MLFLOW_TRACKING_URI`` and ``GROUPDIFF_CATALOGUE_URL``
(``infra.stack.client_env``); S3 credentials are read by the store from the environment, never passed here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydantic import Field

from groupdiff.config_base import Section

ENV_OUT = "GROUPDIFF_OUT"
ENV_STORE = "GROUPDIFF_STORE_ROOT"
ENV_CATALOGUE = "GROUPDIFF_CATALOGUE_URL"
ENV_MLFLOW = "MLFLOW_TRACKING_URI"


class RecordsConfig(Section):
    """Locations of the records of one pipeline (strings so they travel as flow parameters)."""

    out: str = Field("outputs", min_length=1, description="Local folder: work files, logs, pid files (and the embedded records).")
    store_root: str = Field("", description="Object store root (file://... or s3://...); empty = file://<out>/store.")
    mlflow_uri: str = Field("", description="MLflow tracking URI; empty = sqlite:///<out>/mlflow.db.")
    catalogue_url: str = Field("", description="Catalogue SQLAlchemy URL; empty = sqlite:///<out>/catalogue.db.")
    experiment: str = Field("groupdiff", min_length=1, max_length=256, description="MLflow experiment of pipeline runs.")
    use_env: bool = Field(True, description="Fill empty locations from $GROUPDIFF_STORE_ROOT, $MLFLOW_TRACKING_URI and "
                          "$GROUPDIFF_CATALOGUE_URL (local stack / production); false = the embedded default.")
    work_pool: str = Field("local", min_length=1, max_length=128, description="Work pool name: the training concurrency limit is per pool.")
    training_slots: int = Field(1, ge=1, le=64, description="Training runs at once in the work pool (the Prefect global "
                                "concurrency limit 'training-<pool>', created with this value when missing). 1 on a "
                                "shared pool; `groupdiff run` uses one per CPU core, up to the number of variants.")

    @classmethod
    def from_env(cls, out: str | None = None, **fields) -> "RecordsConfig":
        """Settings with the output folder from ``$GROUPDIFF_OUT`` (locations come from the environment on resolve)."""
        return cls(**{"out": out or os.environ.get(ENV_OUT, "outputs"), **fields})

    def resolved(self) -> "RecordsConfig":
        """The same settings with empty locations replaced by the embedded defaults (absolute paths)."""
        out = Path(self.out).resolve()
        env = os.environ if self.use_env else {}
        return self.model_copy(update={
            "out": str(out),
            "store_root": self.store_root or env.get(ENV_STORE) or f"file://{out / 'store'}",
            "mlflow_uri": self.mlflow_uri or env.get(ENV_MLFLOW) or f"sqlite:///{out / 'mlflow.db'}",
            "catalogue_url": self.catalogue_url or env.get(ENV_CATALOGUE) or f"sqlite:///{out / 'catalogue.db'}",
        })


@dataclass
class Records:
    """Open handles on the records of :class:`RecordsConfig` (opened lazily, per process)."""

    config: RecordsConfig

    def __post_init__(self) -> None:
        self.config = self.config.resolved()

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def work(self, *parts: str) -> Path:
        """A local work folder ``<out>/work/<parts>`` (created)."""
        path = self.out.joinpath("work", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def store(self):
        from registry.stores import open_store

        return open_store(self.config.store_root)

    @cached_property
    def mlflow(self):
        from mlflow import MlflowClient

        return MlflowClient(self.config.mlflow_uri)

    def experiment_id(self) -> str:
        """The experiment's id (created; embedded MLflow keeps artefacts in ``<out>/mlartifacts``)."""
        exp = self.mlflow.get_experiment_by_name(self.config.experiment)
        if exp is not None:
            return exp.experiment_id
        location = (self.out / "mlartifacts").as_uri() if self.config.mlflow_uri.startswith("sqlite:") else None
        return self.mlflow.create_experiment(self.config.experiment, artifact_location=location)

    @cached_property
    def catalogue(self):
        """A SQLAlchemy session factory of the catalogue (migrated to head)."""
        from registry.catalogue.db import open_session

        return open_session(self.config.catalogue_url)
