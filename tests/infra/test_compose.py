"""The production compose file (Docker cannot run here): its structure, pinning, health checks and secrets."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = yaml.safe_load((INFRA / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
JOBS = {"minio-init"}  # one-shot: no health check, others wait for its successful completion


def _text(value) -> str:
    return yaml.safe_dump(value)


def test_every_tier3_service_is_present():
    assert set(SERVICES) == {"minio", "minio-init", "postgres", "prefect-server", "prefect-services",
                             "prefect-worker", "mlflow"}


def test_images_are_pinned():
    for name, svc in SERVICES.items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"
    for dockerfile in ("mlflow.Dockerfile", "worker.Dockerfile"):
        base = re.search(r"^FROM (\S+)", (INFRA / dockerfile).read_text(), re.M).group(1)
        assert ":" in base and not base.endswith(":latest"), base


def test_long_running_services_have_health_checks_and_dependencies_exist():
    for name, svc in SERVICES.items():
        if name not in JOBS and name != "prefect-services":
            assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name} has no health check"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep in JOBS else "service_healthy"
            assert cond["condition"] == expected, (name, dep, cond)


def test_secrets_come_only_from_the_env_file():
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (INFRA / "compose.yaml").read_text()))
    used |= set(re.findall(r"\$\$([A-Z0-9_]+)", (INFRA / "compose.yaml").read_text()))
    assert used <= set(example) | {"POSTGRES_USER"}, used - set(example)
    for svc in SERVICES.values():
        assert svc.get("env_file") == ".env"
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert str(value).startswith("${"), f"{key} must come from infra/.env, not a literal"
    for key in ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        assert "CHANGE-ME" in example[key]


def test_postgres_creates_the_three_databases_and_mlflow_proxies_multipart_to_minio():
    init = (INFRA / "postgres-init" / "01-databases.sh").read_text()
    assert re.search(r"for db in prefect mlflow catalogue", init)
    mounts = SERVICES["postgres"]["volumes"]
    assert any(m.startswith("./postgres-init:/docker-entrypoint-initdb.d") for m in mounts)
    cmd = _text(SERVICES["mlflow"]["command"])
    assert "--serve-artifacts" in cmd and "--artifacts-destination=s3://${MLFLOW_BUCKET}" in cmd
    assert "@postgres:5432/mlflow" in cmd
    env = SERVICES["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000" and env["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
    assert "@postgres:5432/prefect" in SERVICES["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "services" in SERVICES["prefect-services"]["command"]
    init_job = _text(SERVICES["minio-init"]["command"])
    assert "mc mb --ignore-existing" in init_job and "$$GROUPDIFF_BUCKET" in init_job and "$$MLFLOW_BUCKET" in init_job


def test_both_prefect_processes_keep_concurrency_leases_on_one_shared_volume():
    """The API server takes slot leases, prefect-services' repossessor frees expired ones: with Prefect's default
    in-memory lease store they live in two processes' memories, and a restart forgets them with their slots taken
    (the local stack's restart test shows the same on real servers)."""
    from infra.stack import LEASE_STORAGE

    homes = set()
    for name in ("prefect-server", "prefect-services"):
        env = SERVICES[name]["environment"]
        assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == LEASE_STORAGE, name
        volume = next(v for v in SERVICES[name]["volumes"] if v.endswith(":" + env["PREFECT_HOME"]))
        homes.add(volume)
    assert len(homes) == 1 and homes.pop().split(":")[0] in COMPOSE["volumes"]


def test_no_server_sends_usage_data_out_in_compose_or_the_local_stack(tmp_path):
    """MLflow's server has telemetry on unless told (the clients turn it off in registry/__init__.py, but the
    server never imports it); Prefect's server has analytics on unless told. Both are told, in both stacks."""
    from infra.config import StackConfig
    from infra.stack import services

    off = {"mlflow": ("MLFLOW_DISABLE_TELEMETRY", "true"), "prefect-server": ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
           "prefect-services": ("PREFECT_SERVER_ANALYTICS_ENABLED", "false")}
    for name, (key, value) in off.items():
        assert SERVICES[name]["environment"].get(key) == value, (name, key)
    local = services(StackConfig(state_dir=tmp_path))
    assert local["mlflow"].env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert local["prefect"].env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
