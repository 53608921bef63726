"""Settings of the local stack (``groupdiff up``): ports, folders, which services, and whether it is exposed.

A plain pydantic model (``infra`` imports nothing from ``groupdiff``); every field has a description
and bounds. Ports default to uncommon values so a developer's own PostgreSQL/MLflow keep theirs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ServiceName = Literal["postgres", "s3", "prefect", "worker", "mlflow"]
ALL_SERVICES: tuple[str, ...] = ("postgres", "s3", "prefect", "worker", "mlflow")
# What each service needs running first.
REQUIRES: dict[str, tuple[str, ...]] = {
    "postgres": (), "s3": (), "prefect": ("postgres",), "worker": ("prefect",), "mlflow": ("postgres", "s3"),
}
DATABASES: tuple[str, ...] = ("prefect", "mlflow", "catalogue")


class SeaweedPorts(BaseModel):
    """The ports SeaweedFS (``weed mini``) opens besides the S3 API: master, volume server, filer, the S3
    gateway's gRPC port and the admin server (started even with its UI off). All bind to 127.0.0.1, also on an
    exposed stack (none of them checks credentials); each must differ from every other port of the stack
    (checked when the stack starts)."""

    model_config = ConfigDict(extra="forbid")

    master: int = Field(19333, ge=1024, le=65535, description="SeaweedFS master HTTP port (-master.port).")
    master_grpc: int = Field(19334, ge=1024, le=65535, description="SeaweedFS master gRPC port (-master.port.grpc).")
    volume: int = Field(19340, ge=1024, le=65535, description="SeaweedFS volume server HTTP port (-volume.port).")
    volume_grpc: int = Field(19341, ge=1024, le=65535, description="SeaweedFS volume server gRPC port (-volume.port.grpc).")
    filer: int = Field(19888, ge=1024, le=65535, description="SeaweedFS filer HTTP port (-filer.port).")
    filer_grpc: int = Field(19889, ge=1024, le=65535, description="SeaweedFS filer gRPC port (-filer.port.grpc).")
    s3_grpc: int = Field(19001, ge=1024, le=65535, description="SeaweedFS S3 gateway gRPC port (-s3.port.grpc).")
    admin: int = Field(19646, ge=1024, le=65535, description="SeaweedFS admin server HTTP port (-admin.port; UI off).")
    admin_grpc: int = Field(19647, ge=1024, le=65535, description="SeaweedFS admin server gRPC port (-admin.port.grpc).")
    s3_behind: int = Field(
        19002, ge=1024, le=65535,
        description="Exposed stack only: the S3 gateway's own port on 127.0.0.1, behind the forwarder that listens on "
        "s3_port on every interface (so the gateway's gRPC port, which takes new identities unauthenticated, stays "
        "local).",
    )


class StackConfig(BaseModel):
    """The local service stack: on 127.0.0.1, or on every interface behind credentials with ``expose``."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(Path(".groupdiff-stack"), description="Folder for data, logs, pid files and stack.env.")
    services: list[ServiceName] = Field(
        list(ALL_SERVICES), min_length=1, description="Services to run (dependencies are added automatically)."
    )
    postgres_port: int = Field(15432, ge=1024, le=65535, description="PostgreSQL port.")
    s3_port: int = Field(19000, ge=1024, le=65535, description="S3 API port (the SeaweedFS S3 gateway).")
    s3_internal_ports: SeaweedPorts = Field(
        default_factory=SeaweedPorts, description="The other ports SeaweedFS opens on 127.0.0.1 (master, volume, filer, ...).",
    )
    prefect_port: int = Field(14200, ge=1024, le=65535, description="Prefect server API/UI port.")
    worker_port: int = Field(14201, ge=1024, le=65535, description="Prefect worker health-check port.")
    mlflow_port: int = Field(15000, ge=1024, le=65535, description="MLflow tracking server port.")
    expose: bool = Field(
        False,
        description="Bind PostgreSQL, S3, Prefect and MLflow to 0.0.0.0 (every interface) instead of 127.0.0.1. "
        "Then every service requires credentials (MLflow's basic-auth app, Prefect's auth string, S3 keys, "
        "PostgreSQL SCRAM password), read from the environment or secrets_file; 'up' refuses to start without them.",
    )
    secrets_file: Path | None = Field(
        None,
        description="File of NAME=VALUE lines with the credentials an exposed stack needs (MLFLOW_TRACKING_USERNAME, "
        "MLFLOW_TRACKING_PASSWORD, PREFECT_API_AUTH_STRING, PGPASSWORD); must be readable by its owner only "
        "(mode 0600). Variables set in the environment win. Only its path is recorded, never its contents.",
    )
    mlflow_auth_cache_s: int = Field(
        300, ge=0, le=86400,
        description="Exposed stack: seconds MLflow's basic-auth app remembers a verified user/password pair (its "
        "auth_cache_ttl_seconds). Otherwise every request costs a password check of about 0.5 s of CPU (scrypt); "
        "0 turns the cache off. 'up' sets the admin password before MLflow starts, so no stale one is cached.",
    )
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
    pool_limit: int | None = Field(
        4, ge=1, le=1000, description="Flow runs of the work pool at once (its Prefect concurrency limit, set by every "
        "'up'; more wait as Scheduled). A pipeline run's process takes about 1 GB: 20 runs queued from the UI at once "
        "would otherwise all start. None = unlimited.",
    )
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

    @model_validator(mode="after")
    def _distinct_ports(self) -> "StackConfig":
        seen: dict[int, str] = {}
        for name, port in self.all_ports.items():
            if port in seen:
                raise ValueError(f"port {port} is given to both {seen[port]} and {name}; every port must differ")
            seen[port] = name
        return self

    @property
    def all_ports(self) -> dict[str, int]:
        """Every port of the stack by config field name (``s3_internal_ports.<name>`` for SeaweedFS's own)."""
        out = {f"{name}_port": port for name, port in self.ports.items()}
        out.update({f"s3_internal_ports.{k}": v for k, v in self.s3_internal_ports.model_dump().items()})
        return out

    @property
    def ports(self) -> dict[str, int]:
        """Port of each service."""
        return {
            "postgres": self.postgres_port, "s3": self.s3_port, "prefect": self.prefect_port,
            "worker": self.worker_port, "mlflow": self.mlflow_port,
        }
