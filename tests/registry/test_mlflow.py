"""MLflow tracking and registry against the local stack's MLflow server (artefacts proxied to S3)."""
from __future__ import annotations

import uuid

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from groupdiff.config import GuidanceConfig, ModelConfig, SamplerConfig
from groupdiff.models import build_model
from groupdiff.tracking import NullTracker
from registry.mlflow_model import build_configs, generate_groups, log_groupdiff_model
from registry.mlflow_registry import CHALLENGER, CHAMPION, log_dataset, promote_if_better, version_by_alias
from registry.mlflow_tracker import PARENT_TAG, MlflowTracker, make_tracker, start_run

pytestmark = pytest.mark.integration

MODEL = ModelConfig(name="custom", depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=8, in_channels=1,
                    num_classes=3, learn_sigma=False, max_group_size=4)
SAMPLER = SamplerConfig(method="ode-euler", num_steps=2, seed=0)
GUIDANCE = GuidanceConfig(mode="groupdiff-l", group_size=2, cfg_scale=1.5)


@pytest.fixture
def client(stack_env):
    mlflow.set_tracking_uri(stack_env["MLFLOW_TRACKING_URI"])
    yield MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    mlflow.set_tracking_uri(None)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(MODEL)
    with torch.no_grad():  # adaLN-zero init outputs zeros; perturb so different weights give different images
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_tracker_attaches_to_nested_run_and_logs_params_metrics_artifacts(client, monkeypatch, tmp_path, stack_env):
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    parent = start_run(client, experiment, "pipeline")
    child = start_run(client, experiment, "train", parent_run_id=parent)
    monkeypatch.setenv("MLFLOW_RUN_ID", child)
    assert isinstance(make_tracker(rank=1), NullTracker)
    tracker = make_tracker(rank=0, tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    assert isinstance(tracker, MlflowTracker) and tracker.run_id == child and not tracker.owns_run
    tracker.log_params({"model": MODEL.model_dump(), "sampler": {"num_steps": 2}})
    tracker.log_params(GUIDANCE)  # a typed config directly
    for step, loss in [(1, 0.9), (2, 0.5), (3, 0.25)]:
        tracker.log_metrics({"loss": loss}, step=step)
    text = tmp_path / "notes.txt"
    text.write_text("loss went down")
    tracker.log_artifact(text, "plots/summary.txt")
    tracker.log_image(np.zeros((8, 8, 3), dtype=np.uint8), "grids/step3.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    axis.plot([1, 2, 3], [0.9, 0.5, 0.25])
    tracker.log_figure(figure, "plots/loss.png")
    plt.close(figure)
    tracker.close()

    run = client.get_run(child)
    assert run.info.status == "RUNNING"  # attached: its owner ends it
    assert run.data.tags[PARENT_TAG] == parent
    assert run.data.params["model.depth"] == "1" and run.data.params["sampler.num_steps"] == "2"
    history = client.get_metric_history(child, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.5), (3, 0.25)]
    assert {a.path for a in client.list_artifacts(child, "plots")} == {"plots/summary.txt", "plots/loss.png"}
    assert run.data.params["group_size"] == "2" and run.data.params["mode"] == "groupdiff-l"
    assert {a.path for a in client.list_artifacts(child, "grids")} == {"grids/step3.png"}
    local = mlflow.artifacts.download_artifacts(run_id=child, artifact_path="plots/summary.txt", dst_path=str(tmp_path / "dl"))
    assert open(local).read() == "loss went down"
    # the server proxied the artefact into the S3 bucket
    from registry.stores import open_store

    keys = open_store("s3://mlflow").list("artifacts")
    assert any(k.endswith(f"{child}/artifacts/plots/summary.txt") for k in keys)

    monkeypatch.delenv("MLFLOW_RUN_ID")
    own = MlflowTracker(tracking_uri=stack_env["MLFLOW_TRACKING_URI"], experiment=experiment)
    own.close()
    assert client.get_run(own.run_id).info.status == "FINISHED"
    with pytest.raises(ValueError, match="does not exist"):
        MlflowTracker(run_id="0" * 32, tracking_uri=stack_env["MLFLOW_TRACKING_URI"])


def test_dataset_lineage_is_logged_as_run_input(client):
    run = start_run(client, f"exp-{uuid.uuid4().hex[:8]}", "embed")
    features = np.arange(24, dtype=np.float32).reshape(6, 4)
    dataset = log_dataset(client, run, features, targets=np.arange(6), source="s3://groupdiff/data/fmnist",
                          name="fmnist-train", context="training")
    inputs = client.get_run(run).inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.name == "fmnist-train" and inputs[0].dataset.digest == dataset.digest
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    assert "s3://groupdiff/data/fmnist" in inputs[0].dataset.source


def test_register_promote_only_when_better_then_load_champion_and_generate(client):
    name = f"gd-{uuid.uuid4().hex[:8]}"
    model_a, model_b = _model(1), _model(2)
    with mlflow.start_run():
        info_a = log_groupdiff_model(model_a, MODEL, SAMPLER, GUIDANCE, registered_model_name=name)
        info_b = log_groupdiff_model(model_b, MODEL, SAMPLER, GUIDANCE, name="model_b")
    assert info_a.signature.params is not None
    flavor = info_a.flavors["python_function"]  # models-from-code: no cloudpickled python_model
    assert "python_model" not in flavor and flavor["model_code_path"].endswith("pyfunc_code.py")
    assert flavor["artifacts"]["weights"]["path"].endswith("weights.safetensors")
    v2 = mlflow.register_model(info_b.model_uri, name).version
    v3 = mlflow.register_model(info_b.model_uri, name).version
    v4 = mlflow.register_model(info_b.model_uri, name).version

    first = promote_if_better(client, name, 1, 20.0, "fid-1k-v1")
    assert first.decision == "promoted" and version_by_alias(client, name, CHAMPION).version == "1"
    worse = promote_if_better(client, name, v2, 25.0, "fid-1k-v1")
    assert worse.decision == "rejected" and version_by_alias(client, name, CHAMPION).version == "1"
    assert version_by_alias(client, name, CHALLENGER).version == str(v2)
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.champion_version"] == "1" and float(tags["promotion.champion_score"]) == 20.0
    assert float(tags["promotion.candidate_score"]) == 25.0 and tags["promotion.protocol_id"] == "fid-1k-v1"
    other = promote_if_better(client, name, v3, 1.0, "fid-1k-v2")  # better number, different protocol
    assert other.decision == "incomparable" and version_by_alias(client, name, CHAMPION).version == "1"
    better = promote_if_better(client, name, v4, 10.0, "fid-1k-v1")
    assert better.decision == "promoted" and version_by_alias(client, name, CHAMPION).version == str(v4)
    old = client.get_model_version(name, "1")
    assert old.tags["champion.replaced_by"] == str(v4)
    assert CHALLENGER not in (old.aliases or []) and version_by_alias(client, name, CHALLENGER).version == str(v2)

    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    params = {"group_size": 2, "seed": 3, "num_steps": 2}
    images = loaded.predict(pd.DataFrame({"label": [0, 2]}), params=params)
    sampler, guidance = build_configs({"sampler": SAMPLER.model_dump(), "guidance": GUIDANCE.model_dump()}, params)
    expected = generate_groups(model_b, [0, 2], sampler, guidance, MODEL.input_size)
    assert images.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)  # champion = model_b's weights
    assert not np.allclose(expected, generate_groups(model_a, [0, 2], sampler, guidance, MODEL.input_size))

    with pytest.raises(KeyError, match="no-such-model"):
        promote_if_better(client, "no-such-model", 1, 1.0, "fid-1k-v1")


def test_system_metrics_are_sampled_into_the_run(client, stack_env):
    import time

    tracker = MlflowTracker(tracking_uri=stack_env["MLFLOW_TRACKING_URI"], experiment=f"exp-{uuid.uuid4().hex[:8]}",
                            system_metrics=True, system_metrics_interval_s=0.2)
    deadline = time.monotonic() + 30
    keys: set[str] = set()
    while time.monotonic() < deadline and "system/cpu_utilization_percentage" not in keys:
        time.sleep(0.3)
        keys = set(client.get_run(tracker.run_id).data.metrics)
    tracker.close()
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_baseline_model_asked_for_a_group_samples_it_with_groupdiff_l():
    """MLflow passes the signature's default mode ('baseline' for a baseline model) with every call: asking such
    a model for groups of 2 samples them with GroupDiff-l instead of failing validation."""
    saved = {"sampler": SAMPLER.model_dump(), "guidance": GuidanceConfig(mode="baseline", group_size=1).model_dump()}
    _, guidance = build_configs(saved, {"group_size": 2, "mode": "baseline", "cfg_scale": 1.5})
    assert (guidance.mode, guidance.group_size) == ("groupdiff-l", 2)
    _, guidance = build_configs(saved, {"group_size": 1, "mode": "baseline"})
    assert (guidance.mode, guidance.group_size) == ("baseline", 1)
    _, guidance = build_configs({**saved, "guidance": GUIDANCE.model_dump()}, {"mode": "groupdiff-f"})
    assert guidance.mode == "groupdiff-f"
