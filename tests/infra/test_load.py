"""Load on the local stack (issue 15, item 2): 20 ``groupdiff-pipeline`` runs submitted through the Prefect REST
API at once, 4 distinct parameter sets (2 trainings x EMA/raw weights, one evaluation protocol) x 5 identical
copies, at most 4 flow runs of the pool at once. At most one training at a time in the pool, each training
run once and every copy served whole from the cache, every run completed, and the registry's aliases
consistent at the end: 4 versions, the champion the best of them whatever order they were registered in."""
from __future__ import annotations

import logging
import uuid
from collections import Counter

import pytest

from infra.load import TINY_RUN, LoadConfig, computed_steps, max_overlap, run_load

# slow: about 3 minutes on 2 idle cores (20 flow-run processes), more on a busy machine; `make test` runs it
pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_NAME = f"gd-load-{uuid.uuid4().hex[:6]}"
# seed 15: no other test trains these (tests/flows/test_stack.py's TINY run shares the store, with seeds 0 and 7)
LOAD = LoadConfig(runs=20, train_steps=[2, 3], weights=["ema", "raw"], seed=15, pool_limit=4, wait_s=600)
log = logging.getLogger("groupdiff.load")


@pytest.fixture(scope="module")
def load(local_stack, stack_api, tmp_path_factory):
    """The deployments registered on the session's stack, then :func:`infra.load.run_load`'s outcome."""
    from flows.deployments import deploy

    deploy(local_stack.work_pool)
    result = run_load(stack_api["PREFECT_API_URL"], local_stack.work_pool, {**TINY_RUN, "model_name": MODEL_NAME},
                      tmp_path_factory.mktemp("load-out"), LOAD, echo=log.info)
    log.info("load: %d runs in %.1fs", len(result.runs), result.seconds)
    return result, stack_api


def test_every_run_completes(load):
    result, _ = load
    states = [r["state"]["type"] for r in result.runs]
    assert states == ["COMPLETED"] * LOAD.runs, [(r["id"], r["state"]["type"], r["state"].get("message"))
                                                 for r in result.runs if r["state"]["type"] != "COMPLETED"]
    assert [r["parameters"] for r in result.runs] == result.parameters


def test_one_training_at_a_time_each_training_run_once(load):
    result, _ = load
    assert len(result.trainings) == len(LOAD.train_steps), result.trainings
    assert max_overlap(result.trainings) == 1, sorted(result.trainings)


def test_every_step_computed_once_and_the_copies_served_from_the_cache(load):
    """Each step (cache key) computed by exactly one run, whichever got there first; every other run read it.
    Computed: the classifier once, each training once, each (training, weights) evaluation and registration once."""
    result, _ = load
    computed = computed_steps(result)
    assert [names for names in computed.values() if len(names) > 1] == []
    per_stage = Counter(names[0].split("-")[0] for names in computed.values())
    assert per_stage == {"classifier": 1, "train": len(LOAD.train_steps), "sample": LOAD.distinct,
                         "score": LOAD.distinct, "register": LOAD.distinct}, computed
    assert all(t["state"] in ("Cached", "Completed") for tasks in result.tasks for t in tasks), result.tasks


def test_registry_aliases_consistent(load):
    from mlflow import MlflowClient

    from registry.mlflow_registry import CHAMPION, alias_problems, version_by_alias

    _, env = load
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert len(versions) == LOAD.distinct  # copies registered nothing
    assert len({v.tags["eval.protocol_id"] for v in versions}) == 1  # all comparable
    assert alias_problems(client, MODEL_NAME, TINY_RUN.get("metric", "fd_fmnist")) == []
    scores = {str(v.version): float(v.tags["eval.fd_fmnist"]) for v in versions}
    champion = version_by_alias(client, MODEL_NAME, CHAMPION)
    assert scores[str(champion.version)] == min(scores.values()), (champion.version, scores)

