"""Session fixtures shared by tests/registry and tests/infra: one local stack (PostgreSQL, SeaweedFS S3,
Prefect server + worker, MLflow server) on free ports of 127.0.0.1, started once and stopped after."""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from infra.process import free_stack_ports  # noqa: F401  (tests/infra/test_stack.py imports it from here)

log = logging.getLogger("groupdiff.stack")


@pytest.fixture(scope="session", autouse=True)
def _temporary_prefect_servers_stopped():
    """Prefect's temporary servers (in-process flows without an API URL) stopped at the session's end."""
    yield
    from tests.prefect_services import stop_temporary_servers

    stop_temporary_servers()


@pytest.fixture(scope="session")
def local_stack():
    """A running local stack: yields its ``StackConfig``; teardown stops it and checks nothing is left."""
    from infra.config import StackConfig
    from infra.process import group_alive, read_pid
    from infra.stack import down, up

    # under /tmp (not pytest's 0700 tmp folder) so the unprivileged PostgreSQL user can enter it
    state = Path(tempfile.mkdtemp(prefix="groupdiff-stack-"))
    state.chmod(0o755)
    config = StackConfig(state_dir=state, start_timeout_s=240, pg_durable=False, **free_stack_ports())
    pids: dict[str, int | None] = {}
    try:
        up(config, echo=log.info)
        pids = {name: read_pid(state, name) for name in config.services}
        yield config
    finally:
        t0 = time.monotonic()
        down(config, echo=log.info)
        log.info("down took %.1fs", time.monotonic() - t0)
    left = [name for name, pid in pids.items() if pid is not None and group_alive(pid)]
    t0 = time.monotonic()
    shutil.rmtree(state, ignore_errors=True)
    log.info("rmtree took %.1fs", time.monotonic() - t0)
    assert not left, f"processes left after down: {left}"


@pytest.fixture
def stack_env(local_stack, monkeypatch):
    """Client environment (S3 endpoint + credentials, MLflow and Prefect URLs) of the running stack."""
    from infra.stack import client_env

    env = client_env(local_stack)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="module")
def stack_api(local_stack):
    """The stack's client environment set for a module, and Prefect's settings pointed at its server (threads
    started in the module need ``contextvars.copy_context()`` of the test's thread to see them)."""
    from infra.stack import client_env

    env = client_env(local_stack)
    with client_environment(env):
        yield env


@contextlib.contextmanager
def client_environment(env: dict[str, str]):
    """``env`` (a stack's client variables) set in ``os.environ`` and Prefect's settings pointed at its API, both
    restored on exit."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as patch, temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        for key, value in env.items():
            patch.setenv(key, value)
        yield


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (many small ops oversubscribe a shared CPU), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory):
    """(vae, folder): a random tiny AutoencoderKL and its files (:func:`tests.builders.save_tiny_vae`)."""
    from tests.builders import save_tiny_vae

    root = tmp_path_factory.mktemp("vae")
    return save_tiny_vae(root), root


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 built with random init, its state dict saved to a file (tests only; never
    the real network)."""
    from groupdiff.metrics.inception import random_inception_extractor

    net = random_inception_extractor(seed=0)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return path
