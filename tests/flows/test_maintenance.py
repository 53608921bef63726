"""evaluate-model and retrain-nightly on the embedded default (Prefect's temporary API, SQLite MLflow, file store)."""
from __future__ import annotations

import pytest

from flows.params import EvaluateParams, PipelineParams
from flows.records import Records, RecordsConfig

from .test_stack import TINY

pytestmark = pytest.mark.integration  # runs Prefect's temporary API server


def test_evaluate_and_retrain_from_champion(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.maintenance import evaluate_model, retrain_nightly
    from flows.pipeline import pipeline
    from registry.mlflow_registry import CHAMPION, version_by_alias

    params = PipelineParams(**{**TINY, "variants": ["baseline"], "model_name": "gd-nightly"})
    records = RecordsConfig(out=str(tmp_path), use_env=False, work_pool="nightly-test")
    rec = Records(records)
    with prefect_test_harness():
        first = pipeline(params=params, records=records)
        v1 = first["rows"][0]
        assert v1["decision"] == "promoted"
        # evaluate-model on the champion under the pipeline's protocol reproduces the pipeline's score
        evaluated = evaluate_model(params=EvaluateParams(
            model_name="gd-nightly", version="champion", sampling_steps=params.sampling_steps,
            cfg_scale=params.cfg_scale, num_samples=params.num_samples, reference_limit=params.reference_limit,
            classifier_train_limit=params.classifier_train_limit, classifier_epochs=params.classifier_epochs),
            records=records)
        assert evaluated["version"] == v1["version"] and evaluated["protocol"] == first["protocol"]
        assert evaluated["metrics"]["fd_fmnist"] == pytest.approx(v1["metrics"]["fd_fmnist"])
        # the weights the version was registered with, and the same real-data floor beside the score
        assert evaluated["weights"] == v1["weights"] == "ema"
        assert evaluated["floor"]["fd_fmnist"] == pytest.approx(v1["floor"]["fd_fmnist"])
        # retrain-nightly: fine-tune the champion, same protocol, promote only if better
        nightly = retrain_nightly(params=params, records=records)
    assert nightly["previous_champion"] == v1["version"]
    row = nightly["rows"][0]
    assert row["version"] != v1["version"]
    new = rec.mlflow.get_model_version("gd-nightly", row["version"])
    assert new.tags["promotion.champion_version"] == v1["version"]
    assert new.tags["promotion.protocol_id"] == first["protocol"] == nightly["protocol"]
    # the gate: better only beyond the champion's bootstrap interval (recorded on the version)
    better = row["metrics"]["fd_fmnist"] < v1["metrics"]["fd_fmnist_ci_low"]
    assert row["decision"] == ("promoted" if better else "rejected")
    assert new.tags["promotion.champion_interval"] == repr([v1["metrics"]["fd_fmnist_ci_low"],
                                                            v1["metrics"]["fd_fmnist_ci_high"]])
    assert new.tags["groupdiff.weights"] == "ema"
    champion = version_by_alias(rec.mlflow, "gd-nightly", CHAMPION)
    assert str(champion.version) == (row["version"] if better else v1["version"])
    # catalogue lineage: the fine-tuned checkpoint's parent is the champion's checkpoint
    from registry.catalogue.records import lineage_of_model_version

    with rec.catalogue() as session:
        lineage = lineage_of_model_version(session, "gd-nightly", int(row["version"]))
        assert [a.uri for a in lineage.ancestors] == [v1["checkpoint"]]
        assert lineage.checkpoint.uri == row["checkpoint"] != v1["checkpoint"]
