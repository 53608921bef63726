"""The study flow on the embedded default: arms x cfg as child pipeline runs, training once per arm, one comparison."""
from __future__ import annotations

import json

import pytest

from flows.params import PipelineParams, StudyParams
from flows.records import Records, RecordsConfig
from flows.study import arms

from .test_stack import TINY

pytestmark = pytest.mark.integration  # runs Prefect's temporary API server


def test_grid_of_arms():
    params = StudyParams(group_sizes=[2, 4], grouping_modes=["similarity", "class"], variants=["groupdiff-l"])
    grid = arms(params)
    assert grid[0] == {"variants": ["baseline"]}
    assert len(grid) == 1 + 2 * 2
    assert {(a["group_size"], a["grouping_mode"]) for a in grid[1:]} == {(2, "similarity"), (2, "class"),
                                                                          (4, "similarity"), (4, "class")}


def test_invalid_study_rejected():
    with pytest.raises(ValueError, match="group_sizes"):
        StudyParams(group_sizes=[0])


def test_study_runs_arms_as_child_runs(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.study import study

    base = PipelineParams(**{**TINY, "model_name": "gd-study"})
    params = StudyParams(base=base, group_sizes=[2], grouping_modes=["similarity"], variants=["groupdiff-l"],
                         cfg_scales=[1.0, 2.0])
    records = RecordsConfig(out=str(tmp_path), use_env=False, work_pool="study-test")
    with prefect_test_harness():
        result = study(params=params, records=records)
    rows = result["rows"]
    assert {(r["arm"], r["cfg_scale"]) for r in rows} == {("baseline", 1.0), ("baseline", 2.0),
                                                          ("groupdiff-l N=2 similarity", 1.0),
                                                          ("groupdiff-l N=2 similarity", 2.0)}
    # the cfg sweep reuses each arm's training: two trainings for four child runs
    assert len(list(tmp_path.glob("work/train/*/train.log"))) == 2
    for r in rows:  # the table reports what the score stage wrote
        assert json.loads(open(r["score_json"]).read())["metrics"]["fd_fmnist"] == pytest.approx(r["metrics"]["fd_fmnist"])
        assert f"| {r['arm']} | {r['cfg_scale']:g} | {r['metrics']['fd_fmnist']:.4g} |" in result["table"]
    rec = Records(records)
    artefacts = {a.path for a in rec.mlflow.list_artifacts(result["mlflow_run_id"], "report")}
    assert "report/fd_fmnist_vs_cfg.png" in artefacts and "report/report.md" in artefacts
    assert not rec.mlflow.search_registered_models()  # study arms are not registered
