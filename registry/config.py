"""Typed settings of the record layer (object store, catalogue, MLflow).

Numbers live here once; secrets never do: S3 credentials are read from the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) at connection time and never logged.
"""
from __future__ import annotations

import os

from pydantic import Field, ValidationError

from groupdiff.config_base import Section

MIB = 1024 * 1024

# Environment variables read for S3 (names only; values are never stored in configs or logs).
ENV_ENDPOINT = "GROUPDIFF_S3_ENDPOINT"
ENV_ENDPOINT_FALLBACK = "MLFLOW_S3_ENDPOINT_URL"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_REGION = "AWS_DEFAULT_REGION"
# Set by `groupdiff up` (stack.env) and the compose file: where the platform's records live.
ENV_STORE_ROOT = "GROUPDIFF_STORE_ROOT"
ENV_CATALOGUE_URL = "GROUPDIFF_CATALOGUE_URL"
# $GROUPDIFF_STORE_<FIELD> sets a transfer setting of ObjectStoreConfig for every store a process opens (the
# flows open theirs from the environment), e.g. GROUPDIFF_STORE_MAX_RETRIES=5 or GROUPDIFF_STORE_TIMEOUT_S=120.
ENV_STORE_PREFIX = "GROUPDIFF_STORE_"
ENV_STORE_FIELDS = ("part_size_mib", "max_retries", "backoff_s", "timeout_s", "progress_min_mib", "presign_expiry_s")


class ObjectStoreConfig(Section):
    """Where artefacts live and how they are moved (DESIGN 2.3)."""

    root: str = Field(
        "file://./outputs/store",
        description="Store root: 'file://PATH' (embedded default, relative paths from the working directory) "
        "or 's3://BUCKET[/PREFIX]' (MinIO or any S3 endpoint).",
    )
    endpoint: str | None = Field(
        None,
        description="S3 endpoint URL such as 'http://127.0.0.1:9000'; None = from $GROUPDIFF_S3_ENDPOINT "
        "(or $MLFLOW_S3_ENDPOINT_URL). Credentials always come from $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY.",
    )
    region: str = Field("us-east-1", min_length=1, max_length=64, description="S3 region used for signing.")
    part_size_mib: int = Field(
        64, ge=5, le=5120, description="Multipart part size in MiB (S3 allows 5 MiB to 5 GiB); larger files are split."
    )
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a failed request (connect/read/5xx) before giving up.")
    backoff_s: float = Field(0.2, ge=0.0, le=30.0, description="Backoff factor: waits backoff_s * 2**(attempt-1) seconds.")
    timeout_s: float = Field(30.0, gt=0.0, le=3600.0, description="Connect and read timeout of one request, seconds.")
    progress_min_mib: int = Field(
        256, ge=0, le=1_000_000, description="Show a progress bar for transfers of at least this many MiB (0 = always)."
    )
    presign_expiry_s: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="Lifetime of a presigned download URL, seconds (S3 max is 7 days)."
    )

    @classmethod
    def from_env(cls) -> "ObjectStoreConfig":
        """The defaults, with each transfer setting (``ENV_STORE_FIELDS``) that ``$GROUPDIFF_STORE_<FIELD>`` sets;
        a bad value is a ValueError naming the variable, its value and the field's bounds."""
        given = {name: os.environ[f"{ENV_STORE_PREFIX}{name.upper()}"] for name in ENV_STORE_FIELDS
                 if f"{ENV_STORE_PREFIX}{name.upper()}" in os.environ}
        try:
            return cls(**given)
        except ValidationError as exc:
            bad = exc.errors()[0]
            name = str(bad["loc"][0])
            raise ValueError(f"${ENV_STORE_PREFIX}{name.upper()}={given[name]!r}: {bad['msg']} "
                             f"({cls.model_fields[name].description})") from None


class CatalogueConfig(Section):
    """The SQL catalogue of datasets, embeddings, groups, checkpoints, evaluations and model versions."""

    url: str = Field(
        "sqlite:///outputs/catalogue.db",
        description="SQLAlchemy URL: 'sqlite:///PATH' (default) or 'postgresql+psycopg2://USER@HOST:PORT/DB'.",
    )


class MlflowConfig(Section):
    """MLflow tracking and model registry."""

    tracking_uri: str = Field(
        "sqlite:///outputs/mlflow.db",
        description="MLflow tracking URI: a database URL (embedded) or 'http://HOST:PORT' of an MLflow server.",
    )
    experiment: str = Field("groupdiff", min_length=1, max_length=256, description="Experiment name of pipeline runs.")
    model_name: str = Field("groupdiff", min_length=1, max_length=256, description="Registered model name.")
    metric_name: str = Field("fid", min_length=1, max_length=128, description="Score compared for promotion.")
    lower_is_better: bool = Field(True, description="True when a smaller score is better (FID).")
