"""Promotions at the same moment (issue 15, item 2): registrations of one model by concurrent flow runs go
through the promotion gate one at a time (``flows.eval_tasks.promote_serialised``, a Prefect global
concurrency limit), so the champion is the best version whatever the order. On the local stack."""
from __future__ import annotations

import contextvars
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_model(stack_api):
    """(client, a fresh registered model name) deleted after the test: its versions point at no model files, and
    the stack's consistency checks (tests/flows/test_stack.py) would report them as missing artefacts."""
    from mlflow import MlflowClient

    client, names = MlflowClient(stack_api["MLFLOW_TRACKING_URI"]), []
    yield client, names
    for name in names:
        client.delete_registered_model(name)


def test_concurrent_promotions_leave_the_best_champion(scratch_model):
    """Six registrations promoted at the same moment, best score last in line: without serialising, each read the
    same champion and the last alias write won (the worst version stayed champion in 2 of 3 tries here)."""
    from flows.eval_tasks import promote_serialised
    from registry.mlflow_registry import CHAMPION, alias_problems, version_by_alias

    client, name = scratch_model[0], f"gd-race-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    scratch_model[1].append(name)
    run_id = client.create_run("0").info.run_id
    versions = [client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version for _ in range(6)]
    scores = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    barrier = threading.Barrier(len(versions))

    def promote(i: int):
        barrier.wait()
        return promote_serialised(client, name, versions[i], scores[i], "protocol", "fd", None)

    contexts = [contextvars.copy_context() for _ in versions]  # this thread's Prefect settings, one copy per thread
    with ThreadPoolExecutor(len(versions)) as pool:
        decisions = list(pool.map(lambda i: contexts[i].run(promote, i), range(len(versions))))
    assert alias_problems(client, name, "fd") == []
    assert str(version_by_alias(client, name, CHAMPION).version) == str(versions[-1])
    assert sum(d.decision == "promoted" for d in decisions) >= 1


def test_identical_runs_tag_one_version_at_once(stack_api, scratch_model):
    """Identical flow runs whose registration came from the cache all tag the one version it made, at the same
    moment: MLflow's tag insert of the loser fails with a unique violation (a run failed so under 20 runs at
    once); the writers that lose to the same value are accepted, every tag ends with its value."""

    from flows.datasets import tag_model_version, version_tags
    from flows.records import Records, RecordsConfig

    rec = Records(RecordsConfig(out="/tmp/unused", mlflow_uri=stack_api["MLFLOW_TRACKING_URI"]))
    client, name = scratch_model[0], f"gd-tags-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    scratch_model[1].append(name)
    run_id = client.create_run("0").info.run_id
    dataset = {"name": "fmnist-train", "digest": "d" * 16}
    writers = 8
    for _ in range(5):  # a few versions: the collision needs two inserts of one tag inside a few milliseconds
        version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version
        barrier = threading.Barrier(writers)

        def tag(_: int) -> None:
            barrier.wait()
            tag_model_version(rec, name, version, dataset)

        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(tag, range(writers)))  # raises what a writer raised
        tags = client.get_model_version(name, version).tags
        assert {k: tags.get(k) for k in version_tags(dataset)} == version_tags(dataset)
