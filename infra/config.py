"""Settings of the local stack (``groupdiff up``): ports, folders, which services.

A plain pydantic model (``infra`` imports nothing from ``groupdiff``); every field has a description
and bounds. Ports default to uncommon values so a developer's own PostgreSQL/MLflow keep theirs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ServiceName = Literal["postgres", "s3", "prefect", "worker", "mlflow"]
ALL_SERVICES: tuple[str, ...] = ("postgres", "s3", "prefect", "worker", "mlflow")
# What each service needs running first.
REQUIRES: dict[str, tuple[str, ...]] = {
    "postgres": (), "s3": (), "prefect": ("postgres",), "worker": ("prefect",), "mlflow": ("postgres", "s3"),
}
DATABASES: tuple[str, ...] = ("prefect", "mlflow", "catalogue")


class StackConfig(BaseModel):
    """The local service stack on 127.0.0.1."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(Path(".groupdiff-stack"), description="Folder for data, logs, pid files and stack.env.")
    services: list[ServiceName] = Field(
        list(ALL_SERVICES), min_length=1, description="Services to run (dependencies are added automatically)."
    )
    postgres_port: int = Field(15432, ge=1024, le=65535, description="PostgreSQL port.")
    s3_port: int = Field(19000, ge=1024, le=65535, description="S3 server (moto) port.")
    prefect_port: int = Field(14200, ge=1024, le=65535, description="Prefect server API/UI port.")
    worker_port: int = Field(14201, ge=1024, le=65535, description="Prefect worker health-check port.")
    mlflow_port: int = Field(15000, ge=1024, le=65535, description="MLflow tracking server port.")
    pg_bin_dir: Path = Field(
        Path("/usr/lib/postgresql/15/bin"), description="Folder with initdb, postgres and pg_isready (Debian layout)."
    )
    pg_os_user: str = Field(
        "postgres", min_length=1, max_length=64,
        description="OS user that runs PostgreSQL when the stack is started as root (PostgreSQL refuses root).",
    )
    bucket: str = Field("groupdiff", min_length=3, max_length=63, description="Bucket of the artefact store.")
    mlflow_bucket: str = Field("mlflow", min_length=3, max_length=63, description="Bucket of MLflow's artefacts.")
    region: str = Field("us-east-1", min_length=1, max_length=64, description="S3 region clients sign requests for.")
    work_pool: str = Field("local", min_length=1, max_length=128, description="Prefect process work pool name.")
    pg_durable: bool = Field(
        True, description="PostgreSQL fsync on; False trades crash safety for speed (throwaway stacks in tests only).",
    )
    mlflow_jobs: bool = Field(
        False, description="Run MLflow's background job runner (GenAI jobs; 8 extra processes). Off by default."
    )
    start_timeout_s: float = Field(180.0, gt=0, le=3600, description="Seconds a service may take to become healthy.")
    stop_timeout_s: float = Field(20.0, gt=0, le=600, description="Seconds before a stopping service is killed.")

    @field_validator("services")
    @classmethod
    def _with_requirements(cls, value: list[str]) -> list[str]:
        wanted = set(value)
        changed = True
        while changed:
            extra = {dep for s in wanted for dep in REQUIRES[s]} - wanted
            wanted |= extra
            changed = bool(extra)
        return [s for s in ALL_SERVICES if s in wanted]

    @property
    def ports(self) -> dict[str, int]:
        """Port of each service."""
        return {
            "postgres": self.postgres_port, "s3": self.s3_port, "prefect": self.prefect_port,
            "worker": self.worker_port, "mlflow": self.mlflow_port,
        }
