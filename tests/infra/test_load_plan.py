"""The load harness's own logic (infra/load.py), without a stack: the run plan and the overlap count."""
from __future__ import annotations

import pytest

from infra.load import TINY_RUN, LoadConfig, computed_steps, fully_cached, max_overlap, plan


def test_plan_cycles_the_distinct_sets_under_one_seed():
    config = LoadConfig(runs=6, train_steps=[2, 3], weights=["ema", "raw"], seed=9)
    runs = plan(TINY_RUN, "/out", config)
    sets = [(r["params"]["train_steps"], r["params"]["weights"]) for r in runs]
    assert sets == [(2, "ema"), (2, "raw"), (3, "ema"), (3, "raw"), (2, "ema"), (2, "raw")]
    assert {r["params"]["seed"] for r in runs} == {9} and {r["records"]["out"] for r in runs} == {"/out"}
    with pytest.raises(ValueError, match="4 distinct parameter sets"):
        plan(TINY_RUN, "/out", config.model_copy(update={"runs": 3}))


def test_max_overlap_counts_intervals_sharing_a_moment():
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # one ends as the next starts
    assert max_overlap([(0, 5), (1, 2), (1.5, 3), (4, 6)]) == 3


def test_a_step_computed_by_two_runs_is_named():
    class Result:
        tasks = [[{"name": "train-baseline", "state": "Completed", "key": "k1"},
                  {"name": "dataset-a", "state": "Completed", "key": None}],
                 [{"name": "train-baseline", "state": "Cached", "key": "k1"}],
                 [{"name": "train-baseline", "state": "Completed", "key": "k1"}]]

    assert computed_steps(Result()) == {"k1": ["train-baseline", "train-baseline"]}
    assert [fully_cached(t) for t in Result.tasks] == [False, True, False]
