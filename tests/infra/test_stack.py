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

from infra.cli import main
from infra.config import StackConfig
from infra.process import PortInUseError, Service, ServiceError, free_port, group_alive, port_in_use, read_pid, start
from infra.stack import ENV_FILE, down, status, up
from tests.conftest import free_stack_ports

pytestmark = pytest.mark.integration


@pytest.fixture
def state_dir():
    path = Path(tempfile.mkdtemp(prefix="groupdiff-stack-test-"))
    path.chmod(0o755)  # PostgreSQL's user must enter it
    yield path
    from infra.config import ALL_SERVICES  # a failed test must not leave servers behind
    from infra.process import stop

    for name in ALL_SERVICES:
        stop(name, path, timeout_s=20)
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
    config = StackConfig(state_dir=state_dir, services=["postgres", "s3"], **free_stack_ports())
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


def _s3_only(state_dir: Path) -> StackConfig:
    return StackConfig(state_dir=state_dir, services=["s3"], **free_stack_ports())


def test_s3_keeps_its_objects_across_a_restart_and_purge_removes_them(state_dir, monkeypatch, capsys):
    """SeaweedFS keeps data on disk under the state folder: down + up loses nothing; down --purge says what
    goes, deletes it, and a new up starts empty."""
    import psutil

    from infra.stack import client_env
    from registry.stores import open_store

    config = _s3_only(state_dir)
    up(config, echo=lambda _: None)
    pid = read_pid(state_dir, "s3")
    # every listening socket of the server is on 127.0.0.1, on a port of the config
    listening = {c.laddr for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening
    assert {a.port for a in listening} <= {config.s3_port, *config.s3_internal_ports.model_dump().values()}
    identities = state_dir / "s3" / "identities.json"
    assert stat.S_IMODE(identities.stat().st_mode) == 0o600
    for key, value in client_env(config).items():
        monkeypatch.setenv(key, value)
    store = open_store(f"s3://{config.bucket}")
    data = os.urandom(300_000)
    store.put_bytes("checkpoints/r/00000001/model.safetensors", data)
    assert main(["down", "--state-dir", str(state_dir)]) == 0
    assert not group_alive(pid)
    up(config, echo=lambda _: None)
    assert read_pid(state_dir, "s3") != pid
    store = open_store(f"s3://{config.bucket}")
    assert store.list() == ["checkpoints/r/00000001/model.safetensors"]
    assert store.get_bytes("checkpoints/r/00000001/model.safetensors") == data  # size and sha256 verified
    # purge refuses while the server runs, then lists and deletes the data
    code = main(["down", "--state-dir", str(state_dir), "--purge"])
    out = capsys.readouterr().out
    assert code == 0 and "stopped s3" in out and "purging" in out
    assert "s3 " in out and "every object" in out and "credentials.json" in out
    assert not (state_dir / "s3").exists() and not (state_dir / "credentials.json").exists()
    up(config, echo=lambda _: None)  # new credentials, empty buckets
    for key, value in client_env(config).items():
        monkeypatch.setenv(key, value)
    assert open_store(f"s3://{config.bucket}").list() == []
    down(config, echo=lambda _: None)
    ports = (config.s3_port, *config.s3_internal_ports.model_dump().values())
    assert [p for port in ports for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")] == []  # no litter


def test_purge_refuses_while_a_service_runs(state_dir):
    from infra.stack import purge

    config = _s3_only(state_dir)
    up(config, echo=lambda _: None)
    try:
        with pytest.raises(ServiceError, match="s3 still running"):
            purge(config, echo=lambda _: None)
        assert (state_dir / "s3" / "data").is_dir()
    finally:
        down(config, echo=lambda _: None)


def test_every_port_must_differ_and_a_taken_internal_port_is_named(state_dir):
    with pytest.raises(ValidationError, match="port 19333 is given to both"):
        StackConfig(s3_port=19333)
    config = _s3_only(state_dir)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.s3_internal_ports.filer))
        holder.listen()
        with pytest.raises(PortInUseError, match=rf"port {config.s3_internal_ports.filer} .*s3_internal_ports.filer"):
            up(config, echo=lambda _: None)
    assert read_pid(state_dir, "s3") is None


def test_an_unexposed_s3_server_needs_no_port_behind_a_forwarder(state_dir):
    """Unexposed, nothing listens on s3_internal_ports.s3_behind, so another process may hold it (a parallel
    stack picking free ports took it and the next restart of S3 failed with PortInUseError); S3 still starts."""
    config = _s3_only(state_dir)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.s3_internal_ports.s3_behind))
        holder.listen()
        try:
            up(config, echo=lambda _: None)
            assert [r.healthy for r in status(config)] == [True]
        finally:
            down(config, echo=lambda _: None)


def test_the_worker_is_healthy_only_once_its_work_pool_exists_and_up_sets_the_pool_limit(state_dir, capsys):
    """The worker answers /health from its first moment, before it has created its pool; deploying right after
    'up' then failed with 'Could not find work pool'. Now 'up' returns once the pool exists, and every 'up' sets
    the pool's flow-run limit from the config (an unlimited pool started every queued run at once)."""
    import httpx

    from infra.stack import set_pool_limit, work_pool_exists

    config = StackConfig(state_dir=state_dir, services=["worker"], pg_durable=False, **free_stack_ports())
    api = f"http://127.0.0.1:{config.prefect_port}/api"

    def limit() -> int | None:
        return httpx.get(f"{api}/work_pools/{config.work_pool}").json()["concurrency_limit"]

    try:
        up(config, echo=lambda _: None)
        assert work_pool_exists(api, config.work_pool)  # at once, no waiting here
        assert {r.name: r.healthy for r in status(config)}["worker"]
        other = config.model_copy(update={"work_pool": "no-such-pool"})  # the same worker, a pool nobody made
        assert not work_pool_exists(api, other.work_pool)
        assert {r.name: r.healthy for r in status(other)} == {"postgres": True, "prefect": True, "worker": False}

        assert limit() == config.pool_limit == 4
        assert set_pool_limit(api, config.work_pool, None) == 4 and limit() is None
        assert main(["up", "--state-dir", str(state_dir), "--services", "worker", "--pool-limit", "2"]) == 0  # running
        assert limit() == 2 and "work pool 'local': at most 2 flow runs at once" in capsys.readouterr().out
        up(config.model_copy(update={"pool_limit": None}), echo=lambda _: None)
        assert limit() is None
    finally:
        down(config, echo=lambda _: None)


# Holds one slot of the global concurrency limit argv[1] with a lease (as a training does) until a line arrives.
_SLOT_HOLDER = """
import sys
from prefect.concurrency.sync import concurrency
with concurrency(sys.argv[1], occupy=1, lease_duration=60):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def test_training_slots_held_across_a_prefect_restart_are_freed(state_dir):
    """A slot taken before the Prefect server restarts is freed after it: at once when its holder ends, and by
    the lease's expiry when its holder was killed. With Prefect's default in-memory lease store the restart
    forgot both leases, the slots stayed taken and every later training waited for ever (the load and browser
    tests hung after the whole-stack restart of tests/flows/test_stack.py)."""
    import signal
    import subprocess
    import time

    import httpx

    from infra.process import stop

    config = StackConfig(state_dir=state_dir, services=["prefect"], pg_durable=False, **free_stack_ports())
    api = f"http://127.0.0.1:{config.prefect_port}/api"
    env = {**os.environ, "PREFECT_API_URL": api}

    def slots(name: str) -> int:
        response = httpx.get(f"{api}/v2/concurrency_limits/{name}")
        response.raise_for_status()
        return response.json()["active_slots"]

    holders: list[subprocess.Popen] = []
    try:
        up(config, echo=lambda _: None)
        for name in ("ends", "killed"):
            httpx.post(f"{api}/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
            holder = subprocess.Popen([sys.executable, "-c", _SLOT_HOLDER, name], env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            holders.append(holder)
            assert holder.stdout.readline().strip() == "held"
        ends, killed = holders
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        assert slots("ends") == 1 and slots("killed") == 1
        assert stop("prefect", state_dir.resolve(), config.stop_timeout_s)
        up(config, echo=lambda _: None)

        ends.stdin.write("go\n")
        ends.stdin.flush()
        assert ends.stdout.readline().strip() == "released" and ends.wait(timeout=30) == 0
        assert slots("ends") == 0
        # the killed holder's lease (60 s) expires and the repossessor (every 15 s) frees its slot
        deadline = time.monotonic() + 150
        while slots("killed") != 0:
            assert time.monotonic() < deadline, "the killed holder's slot was never freed after the restart"
            time.sleep(2)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(timeout=10)
        down(config, echo=lambda _: None)
