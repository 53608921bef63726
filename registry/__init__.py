"""Records: the object store (MinIO/S3 or a local folder), MLflow tracking + model registry, the SQL catalogue.

``registry`` may import ``groupdiff`` (imports point down); ``groupdiff`` never imports ``registry``.
Submodules are imported on use so ``import registry`` stays cheap.

MLflow's usage telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY`` says otherwise: the platform sends nothing
out, and MLflow's client, failing to reach its telemetry server, removes an environment variable from a
background thread while a request in another thread may be iterating ``os.environ`` (a ``KeyError`` that
failed a pipeline run's MLflow call under load).
"""
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
