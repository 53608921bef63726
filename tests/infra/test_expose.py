"""Let no one in (issue 15, item 5): the local stack listens on 127.0.0.1 only, unless exposed; an exposed stack
(``groupdiff up --expose``, every service on 0.0.0.0, contacted here through 127.0.0.1 only) refuses anonymous
requests to MLflow, Prefect, S3 and PostgreSQL, runs a pipeline from its deployment with the credentials, and
leaves none of them in its logs, Prefect parameters and logs, MLflow params, tags and artefacts, catalogue rows
or work folder."""
from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from infra.auth import REQUIRED, CredentialsError
from infra.cli import main
from infra.config import ALL_SERVICES, StackConfig
from infra.process import ServiceError, group_alive, read_pid
from infra.stack import ENV_FILE, client_env, down, up
from tests.conftest import free_stack_ports

pytestmark = pytest.mark.integration
log = logging.getLogger("groupdiff.stack")
WAIT_S = 600
MODEL_NAME = f"gd-exposed-{secrets.token_hex(3)}"
# one variant, two training steps: the pipeline only has to touch every service with the credentials
TINY = dict(
    variants=["baseline"], group_size=2, data_limit=200, train_steps=2, batch_images=8, sampling_steps=2,
    num_samples=40, reference_limit=100, classifier_train_limit=200, threads=1, model_name=MODEL_NAME,
    overrides=["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "embed.classifier.eval_limit=100",
               "embed.classifier.width=8", "embed.classifier.feature_dim=16"],
)


def listening(state: Path, name: str) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of service ``name``'s process and its descendants."""
    root = psutil.Process(read_pid(state, name))
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN}
    return found


def _write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def _new_secrets() -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": "gd-admin", "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18),
            "PREFECT_API_AUTH_STRING": f"gd-prefect:{secrets.token_urlsafe(18)}",
            "PGPASSWORD": secrets.token_urlsafe(18)}


@pytest.fixture
def no_secret_env(monkeypatch):
    for name in REQUIRED:
        monkeypatch.delenv(name, raising=False)


def test_without_expose_every_socket_of_the_stack_is_on_127_0_0_1(local_stack):
    state = local_stack.state_dir.resolve()
    assert not local_stack.expose
    for name in local_stack.services:
        addresses = listening(state, name)
        assert addresses and {ip for ip, _ in addresses} == {"127.0.0.1"}, (name, addresses)


def test_expose_without_credentials_is_refused_before_anything_starts(tmp_path, no_secret_env, capsys):
    state = tmp_path / "stack"
    config = StackConfig(state_dir=state, expose=True, **free_stack_ports())
    with pytest.raises(CredentialsError) as caught:
        up(config, echo=lambda _: None)
    for name in REQUIRED:
        assert name in str(caught.value)
    assert not state.exists()  # nothing started, nothing written
    code = main(["up", "--expose", "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2 and "--expose needs credentials" in err and "PGPASSWORD" in err and not state.exists()
    # a secrets file others can read is refused, naming the file and its mode
    values = _new_secrets()
    loose = _write_private(tmp_path / "secrets.env", "".join(f"{k}={v}\n" for k, v in values.items()), 0o640)
    code = main(["up", "--expose", "--state-dir", str(state), "--secrets-file", str(loose)])
    err = capsys.readouterr().err
    assert code == 2 and str(loose) in err and "0640" in err and "chmod 600" in err
    assert values["PGPASSWORD"] not in err and not state.exists()
    # a weak password is named
    os.chmod(loose, 0o600)
    _write_private(loose, loose.read_text().replace(values["PGPASSWORD"], "short"))
    with pytest.raises(CredentialsError, match="PGPASSWORD is shorter than 12"):
        up(config.model_copy(update={"secrets_file": loose}), echo=lambda _: None)
    assert not state.exists()


@pytest.fixture(scope="module")
def exposed():
    """A full exposed stack on free ports, credentials from an owner-only file, its client environment set for
    the module; stopped after, leaving no process."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    state = Path(tempfile.mkdtemp(prefix="groupdiff-exposed-"))
    state.chmod(0o755)  # PostgreSQL's user must enter it
    keep = Path(tempfile.mkdtemp(prefix="groupdiff-secrets-"))
    values = _new_secrets()
    secrets_file = _write_private(keep / "secrets.env", "".join(f"{k}={v}\n" for k, v in values.items()))
    config = StackConfig(state_dir=state, expose=True, secrets_file=secrets_file, start_timeout_s=240,
                         pg_durable=False, **free_stack_ports())
    with pytest.MonkeyPatch.context() as mp:
        for name in REQUIRED:
            mp.delenv(name, raising=False)
        pids: dict = {}
        try:
            t0 = time.monotonic()
            up(config, echo=log.info)
            print(f"exposed stack up in {time.monotonic() - t0:.1f}s")
            pids = {name: read_pid(state, name) for name in config.services}
            env = client_env(config)
            for key, value in env.items():
                mp.setenv(key, value)
            with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"],
                                     PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}):
                yield {"config": config, "env": env, "secrets": values, "out": keep / "out"}
        finally:
            down(config, echo=log.info)
            left = [name for name, pid in pids.items() if pid is not None and group_alive(pid)]
            shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(keep, ignore_errors=True)
    assert not left, f"processes left after down: {left}"


def _prefect_auth(values: dict) -> tuple[str, str]:
    user, password = values["PREFECT_API_AUTH_STRING"].split(":", 1)
    return user, password


def test_exposed_services_listen_everywhere_and_let_no_one_in(exposed, monkeypatch):
    import psycopg2
    from minio import Minio
    from minio.error import S3Error

    config, env, values = exposed["config"], exposed["env"], exposed["secrets"]
    state = config.state_dir.resolve()
    # client-facing services on every interface; SeaweedFS's own ports and the worker's health port stay local
    for name in ("postgres", "prefect", "mlflow"):
        assert {ip for ip, _ in listening(state, name)} == {"0.0.0.0"}, name
    s3 = listening(state, "s3")
    assert {a for a in s3 if a[0] != "127.0.0.1"} == {("0.0.0.0", config.s3_port)}, s3
    assert {ip for ip, _ in listening(state, "worker")} == {"127.0.0.1"}
    # MLflow: anonymous or wrong password 401, the admin 200
    search = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(search).status_code == 401
    assert httpx.get(search, auth=(values["MLFLOW_TRACKING_USERNAME"], "wrong-password-123")).status_code == 401
    admin = (values["MLFLOW_TRACKING_USERNAME"], values["MLFLOW_TRACKING_PASSWORD"])
    assert httpx.get(search, auth=admin).status_code == 200
    # Prefect: anonymous or wrong 401, the auth string 200
    count = f"{env['PREFECT_API_URL']}/flow_runs/count"
    assert httpx.post(count, json={}).status_code == 401
    assert httpx.post(count, json={}, auth=("gd-prefect", "wrong-password-123")).status_code == 401
    assert httpx.post(count, json={}, auth=_prefect_auth(values)).status_code == 200
    # S3: anonymous and wrongly signed requests are refused; the stack's keys work
    assert httpx.get(f"{env['GROUPDIFF_S3_ENDPOINT']}/{config.bucket}/").status_code == 403
    endpoint = env["GROUPDIFF_S3_ENDPOINT"].removeprefix("http://")
    wrong = Minio(endpoint, access_key=env["AWS_ACCESS_KEY_ID"], secret_key="wrong" * 8, secure=False,
                  region=config.region)
    with pytest.raises(S3Error) as refused:
        wrong.list_objects(config.bucket).__next__()
    assert refused.value.code in ("SignatureDoesNotMatch", "AccessDenied")
    right = Minio(endpoint, access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"], secure=False,
                  region=config.region)
    assert right.bucket_exists(config.bucket)
    # PostgreSQL: no password or a wrong one is refused (SCRAM), the password works
    monkeypatch.delenv("PGPASSWORD")  # libpq would take it from there
    for password in (None, "wrong-password-123"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=config.postgres_port, user="postgres", dbname="catalogue",
                             password=password).close()
    psycopg2.connect(host="127.0.0.1", port=config.postgres_port, user="postgres", dbname="catalogue",
                     password=values["PGPASSWORD"]).close()
    # clients get everything from stack.env (0600); a running exposed stack is not silently re-opened unexposed
    env_file = state / ENV_FILE
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert all(f"export {name}=" in env_file.read_text() for name in REQUIRED)
    with pytest.raises(ServiceError, match="runs exposed"):
        up(config.model_copy(update={"expose": False}), echo=lambda _: None)


def _wait(api: str, run_id: str, auth) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", auth=auth).json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} did not finish in {WAIT_S}s: {run['state']}")


@pytest.fixture(scope="module")
def exposed_run(exposed):
    """The pipeline triggered through the REST API of the exposed stack, run by its worker."""
    from flows.deployments import deploy

    api, auth = exposed["env"]["PREFECT_API_URL"], _prefect_auth(exposed["secrets"])
    deploy(exposed["config"].work_pool)
    dep = httpx.get(f"{api}/deployments/name/groupdiff-pipeline/groupdiff-pipeline", auth=auth).json()
    sent = {"params": TINY, "records": {"out": str(exposed["out"])}}
    created = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": sent}, auth=auth)
    assert created.status_code == 201, created.text
    t0 = time.monotonic()
    run = _wait(api, created.json()["id"], auth)
    print(f"pipeline on the exposed stack took {time.monotonic() - t0:.1f}s")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    return run


def _needles(values: dict) -> dict[str, bytes]:
    """Every secret as it could leak: the passwords, the auth string, and HTTP basic-auth headers."""
    mlflow_basic = f"{values['MLFLOW_TRACKING_USERNAME']}:{values['MLFLOW_TRACKING_PASSWORD']}"
    user, prefect_password = values["PREFECT_API_AUTH_STRING"].split(":", 1)
    found = {name: values[name] for name in ("MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING", "PGPASSWORD",
                                               "AWS_SECRET_ACCESS_KEY")}
    found["prefect password"] = prefect_password
    found["mlflow basic auth"] = base64.b64encode(mlflow_basic.encode()).decode()
    found["prefect basic auth"] = base64.b64encode(values["PREFECT_API_AUTH_STRING"].encode()).decode()
    return {name: value.encode() for name, value in found.items()}


def _leaks(needles: dict[str, bytes], where: str, data: bytes) -> list[str]:
    return [f"{name} in {where}" for name, needle in needles.items() if needle in data]


def _scan_files(needles, folder: Path) -> tuple[list[str], int]:
    leaks, count = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        leaks += _leaks(needles, str(path), path.read_bytes())
        count += 1
    return leaks, count


def _scan_prefect(needles, api: str, auth, run_id: str) -> list[str]:
    """Flow runs (parameters, job variables), task runs, deployments and the logs kept by the Prefect server."""
    leaks = []
    for path, body in (("flow_runs/filter", {}), ("task_runs/filter", {}), ("deployments/filter", {}),
                       ("logs/filter", {"limit": 200}), (f"flow_runs/{run_id}", None)):
        response = httpx.post(f"{api}/{path}", json=body, auth=auth) if body is not None else \
            httpx.get(f"{api}/{path}", auth=auth)
        assert response.status_code == 200, (path, response.text[:200])
        leaks += _leaks(needles, f"prefect {path}", response.content)
    return leaks


def _scan_mlflow(needles, uri: str, tmp: Path) -> tuple[list[str], int]:
    """Params and tags of every run and model version, and every artefact downloaded."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    leaks, artefacts = [], 0
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            leaks += _leaks(needles, f"mlflow run {run.info.run_id} params/tags",
                            repr((run.data.params, run.data.tags)).encode())
            folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp / run.info.run_id)))
            found, count = _scan_files(needles, folder)
            leaks, artefacts = leaks + found, artefacts + count
    for version in client.search_model_versions(f"name='{MODEL_NAME}'"):
        leaks += _leaks(needles, f"model version {version.version}", repr((version.tags, version.description)).encode())
    return leaks, artefacts


def _scan_catalogue(needles, url: str) -> tuple[list[str], int]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    leaks, rows = [], 0
    with engine.connect() as conn:
        for table in sqlalchemy.inspect(engine).get_table_names():
            for row in conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')):
                leaks += _leaks(needles, f"catalogue {table}", repr(tuple(row)).encode())
                rows += 1
    engine.dispose()
    return leaks, rows


def test_a_pipeline_on_the_exposed_stack_leaves_no_secret_behind(exposed, exposed_run, tmp_path):
    config, env = exposed["config"], exposed["env"]
    needles = _needles({**exposed["secrets"], "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]})
    state = config.state_dir.resolve()
    # the scan finds a secret where one is meant to be (stack.env), so a miss below is a real miss
    assert _leaks(needles, "stack.env", (state / ENV_FILE).read_bytes())
    assert exposed_run["parameters"]["params"]["model_name"] == MODEL_NAME
    leaks, logs = _scan_files(needles, state / "logs")
    assert logs >= len(ALL_SERVICES)
    leaks += _scan_files(needles, state / "prefect")[0]
    work, work_files = _scan_files(needles, exposed["out"])
    prefect = _scan_prefect(needles, env["PREFECT_API_URL"], _prefect_auth(exposed["secrets"]), exposed_run["id"])
    mlflow, artefacts = _scan_mlflow(needles, env["MLFLOW_TRACKING_URI"], tmp_path)
    catalogue, rows = _scan_catalogue(needles, env["GROUPDIFF_CATALOGUE_URL"])
    print(f"scanned {logs} service logs, {work_files} work files, {artefacts} MLflow artefacts, {rows} catalogue rows")
    assert work_files > 0 and artefacts > 0 and rows > 0
    assert leaks + work + prefect + mlflow + catalogue == []
