"""The local stack: up / status / down through the API and the ``groupdiff`` CLI, on real processes."""
from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from groupdiff.cli import main
from infra.config import StackConfig
from infra.process import PortInUseError, Service, ServiceError, free_port, group_alive, port_in_use, read_pid, start
from infra.stack import ENV_FILE, down, status, up

pytestmark = pytest.mark.integration


@pytest.fixture
def state_dir():
    path = Path(tempfile.mkdtemp(prefix="groupdiff-stack-test-"))
    path.chmod(0o755)  # PostgreSQL's user must enter it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_status_shows_every_service_healthy(local_stack, capsys):
    rows = status(local_stack)
    assert [r.name for r in rows] == ["postgres", "s3", "prefect", "worker", "mlflow"]
    assert all(r.running and r.healthy and r.pid for r in rows), rows
    assert main(["status", "--state-dir", str(local_stack.state_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("healthy") == 5 and "unhealthy" not in out
    env = local_stack.state_dir / ENV_FILE
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text()
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "GROUPDIFF_S3_ENDPOINT", "AWS_SECRET_ACCESS_KEY"):
        assert f"export {key}=" in text


def test_starting_twice_is_harmless(local_stack, capsys):
    before = {r.name: r.pid for r in status(local_stack)}
    lines: list[str] = []
    up(local_stack, echo=lines.append)
    assert sorted(line.split()[1] for line in lines if line.startswith("running")) == sorted(before)
    assert main(["up", "--state-dir", str(local_stack.state_dir)]) == 0  # ports read back from stack.json
    out = capsys.readouterr().out
    assert out.count("running ") == 5 and "started" not in out
    secret = [l for l in (local_stack.state_dir / ENV_FILE).read_text().splitlines() if "SECRET" in l][0]
    assert secret.split("=", 1)[1] not in out  # credentials are never printed
    assert {r.name: r.pid for r in status(local_stack)} == before


def test_port_taken_is_a_clear_error(state_dir, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = StackConfig(state_dir=state_dir, services=["s3"], s3_port=port)
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already taken"):
            up(config, echo=lambda _: None)
        assert read_pid(state_dir, "s3") is None
        code = main(["up", "--state-dir", str(state_dir), "--services", "s3", "--s3-port", str(port)])
        assert code == 2 and f"port {port}" in capsys.readouterr().err


def test_down_leaves_no_process_behind(state_dir, capsys):
    config = StackConfig(state_dir=state_dir, services=["postgres", "s3"], postgres_port=free_port(),
                         s3_port=free_port())
    up(config, echo=lambda _: None)
    pids = {name: read_pid(state_dir, name) for name in config.services}
    assert all(pids.values()) and all(group_alive(p) for p in pids.values())
    assert main(["down", "--state-dir", str(state_dir)]) == 0
    assert "stopped postgres" in capsys.readouterr().out
    assert not any(group_alive(p) for p in pids.values())
    assert not port_in_use(config.postgres_port) and not port_in_use(config.s3_port)
    assert all(not r.running and not r.healthy for r in status(config))
    assert main(["status", "--state-dir", str(state_dir)]) == 1
    assert down(config, echo=lambda _: None) == []  # twice is harmless too
    up(config, echo=lambda _: None)  # and the kept data folder starts again
    assert all(r.healthy for r in status(config))
    down(config, echo=lambda _: None)


def test_a_crashing_service_reports_its_log(state_dir):
    crash = Service("crash", [sys.executable, "-c", "import sys; print('bad setting xyz'); sys.exit(3)"],
                    free_port(), lambda: False)
    with pytest.raises(ServiceError, match=r"(?s)exited with code 3.*bad setting xyz"):
        start(crash, state_dir, timeout_s=30)
    assert read_pid(state_dir, "crash") is None


def test_config_adds_dependencies_and_validates():
    assert StackConfig(services=["worker"]).services == ["postgres", "prefect", "worker"]
    assert StackConfig(services=["mlflow"]).services == ["postgres", "s3", "mlflow"]
    with pytest.raises(ValidationError, match="postgres_port"):
        StackConfig(postgres_port=80)
    with pytest.raises(ValidationError, match="services"):
        StackConfig(services=["redis"])


def test_postgres_never_runs_as_root(local_stack):
    import pwd

    pid = read_pid(local_stack.state_dir.resolve(), "postgres")
    owner = os.stat(f"/proc/{pid}").st_uid
    expected = pwd.getpwnam(local_stack.pg_os_user).pw_uid if os.geteuid() == 0 else os.geteuid()
    assert owner == expected and owner != 0
