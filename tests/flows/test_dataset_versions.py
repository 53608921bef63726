"""Dataset versions on the local stack (S3, PostgreSQL catalogue, Prefect server, MLflow server): `groupdiff ingest`
-> version 1 -> the pipeline trains on it from S3 -> version 2 -> retrain-nightly resumes the champion on it (the
lineage links champion -> challenger -> dataset version, the training run has the version as its MLflow dataset
input) -> a third retraining with nothing new is skipped and recorded. Plus the parameter rules of a dataset."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows.params import PipelineParams
from flows.records import Records, RecordsConfig

from ..registry.test_datasets import CLASSES, make_image_folder

NAME = f"shapes-{uuid.uuid4().hex[:6]}"
MODEL = f"gd-data-{uuid.uuid4().hex[:6]}"
TINY_DATA = dict(
    variants=["baseline"], group_size=2, train_steps=2, batch_images=8, sampling_steps=2, num_samples=12,
    reference_limit=100, classifier_train_limit=200, threads=1, model_name=MODEL, dataset=NAME,
    overrides=["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "embed.classifier.width=8",
               "embed.classifier.feature_dim=16"],
)


def test_dataset_parameters_pick_the_data_space_and_need_resolving():
    params = PipelineParams(**TINY_DATA)
    assert params.metric == "fd_data"  # the default with a dataset
    with pytest.raises(ValueError, match="metric='fd_fmnist' with dataset="):
        PipelineParams(**{**TINY_DATA, "metric": "fd_fmnist"})
    with pytest.raises(ValueError, match="metric='fd_data' needs a dataset"):
        PipelineParams(**{**TINY_DATA, "dataset": "", "metric": "fd_data"})
    with pytest.raises(ValueError, match="is not resolved yet"):
        params.validate_configs()
    settings = {"data.dataset": "imagefolder", "data.root": "/x # y", "data.image_size": 16, "data.limit": 0,
                "model.in_channels": 3, "model.input_size": 16, "model.num_classes": 3}
    config = params.with_dataset(f"{NAME}@1", settings).config("baseline")
    assert (config.data.root, config.model.in_channels, config.model.num_classes) == ("/x # y", 3, 3)
    with pytest.raises(ValueError, match=r"num_samples=40 must be a multiple of model.num_classes=3 x group_size 2"):
        PipelineParams(**{**TINY_DATA, "num_samples": 40}).with_dataset(f"{NAME}@1", settings).validate_configs()


@pytest.mark.parametrize("args, expected", [
    (["--name", "a/b"], r"name\n.*String should match pattern.*input_value='a/b'"),
    (["--name", "ok", "--encode", "latents"], "encode='latents' needs vae"),
    (["--name", "ok", "--image-size", "4"], r"image_size\n.*greater than or equal to 8"),
])
def test_ingest_command_refuses_bad_values_before_any_work(tmp_path, capsys, args, expected):
    import re

    from infra.cli import main

    assert main(["ingest", str(tmp_path), *args, "--out", str(tmp_path / "out"), "--embedded"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groupdiff ingest: error:") and re.search(expected, err), err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def stack(stack_api, tmp_path_factory):
    """The stack's client environment set for this module (``stack_api``), Prefect pointed at its server."""
    out = tmp_path_factory.mktemp("datasets-out")
    yield {"out": out, "records": RecordsConfig(out=str(out))}


def _ingest_command(*args: str) -> tuple[int, str, str]:
    """``groupdiff ingest ARGS`` as a user runs it (a process of its own, the stack's environment)."""
    done = subprocess.run([sys.executable, "-m", "infra.cli", "ingest", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    return done.returncode, done.stdout, done.stderr


def _training_input(rec: Records, run_id: str) -> tuple[str, str]:
    inputs = rec.mlflow.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    return inputs[0].dataset.name, inputs[0].dataset.digest


@pytest.mark.integration
def test_ingest_train_and_retrain_on_the_newest_version(stack, tmp_path):
    from flows.ingest import IngestParams, ingest
    from flows.maintenance import retrain_nightly
    from flows.pipeline import pipeline
    from registry.catalogue.records import lineage_of_model_version
    from registry.mlflow_registry import CHAMPION, version_by_alias

    rec = Records(stack["records"])
    src = make_image_folder(tmp_path / "src", per_class=16, corrupt=True)
    # bad input: nothing is published, the temporary folder is gone
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        ingest(params=IngestParams(src=str(tmp_path / "missing"), name=NAME), records=stack["records"])
    with pytest.raises(ValueError, match="circle/broken.png"):  # on_corrupt='fail', the default
        ingest(params=IngestParams(src=str(src), name=NAME, image_size=16), records=stack["records"])
    assert rec.store.list(f"datasets/{NAME}") == [] and not list((stack["out"] / "work" / "ingest").iterdir())
    # version 1 through the command: to S3 (the environment's store), the corrupt file named by path
    code, out, err = _ingest_command(str(src), "--name", NAME, "--on-corrupt", "skip", "--image-size", "16",
                                     "--out", str(stack["out"]))
    assert code == 0, err[-3000:]
    v1 = json.loads(out.strip().splitlines()[-1])
    assert (v1["version"], v1["created"], v1["corrupt"]) == (1, True, ["circle/broken.png"])
    assert v1["uri"].startswith("s3://") and v1["counts"] == {c: 16 for c in CLASSES}
    ingest_params = IngestParams(src=str(src), name=NAME, image_size=16, on_corrupt="skip")
    again = ingest(params=ingest_params, records=stack["records"])
    assert (again["version"], again["created"], again["digest"]) == (1, False, v1["digest"])  # no new version

    first = pipeline(params=PipelineParams(**TINY_DATA), records=stack["records"])  # trains reading shards from S3
    row1 = first["rows"][0]
    assert first["dataset"]["version"] == 1 and first["metric"] == "fd_data" and row1["decision"] == "promoted"
    assert "fd_data_ci_low" in row1["metrics"] and "class_agreement" in row1["metrics"]
    # the real-data floor: 12 held-out images (as many as samples) scored like them against the 12 reference
    # images (at most half of the 48 is held out); the classifier trained on the other 24 and is tested on those 24
    assert {"fd_data", "class_agreement"} <= set(row1["floor"]), row1["floor"]
    score = json.loads(Path(row1["score_json"]).read_text())
    assert score["floor_info"] == {"space": "data", "num_images": 12, "reference_images": 12, "dataset_images": 48}
    assert score["classifier"]["eval_images"] == 24 and 0 <= score["classifier"]["test_accuracy"] <= 1
    assert f"12 held-out images of {NAME}@1 (of 48)" in first["floor_note"], first["floor_note"]
    assert _training_input(rec, row1["train_run_id"]) == (f"{NAME}@1", v1["digest"])

    make_image_folder(src, per_class=24)  # new images: version 2
    v2 = ingest(params=ingest_params, records=stack["records"])
    assert (v2["version"], v2["created"], v2["parent_version"]) == (2, True, 1)
    nightly = retrain_nightly(params=PipelineParams(**TINY_DATA), records=stack["records"])
    row2 = nightly["rows"][0]
    assert nightly["dataset"]["version"] == 2 and nightly["previous_champion"] == row1["version"]
    assert _training_input(rec, row2["train_run_id"]) == (f"{NAME}@2", v2["digest"])
    # the champion was re-scored on version 2, so the gate compared the two under one protocol
    assert nightly["champion_rescored"]["version"] == row1["version"] and row2["decision"] in ("promoted", "rejected")
    champion = version_by_alias(rec.mlflow, MODEL, CHAMPION)
    assert str(champion.version) == (row2["version"] if row2["decision"] == "promoted" else row1["version"])
    assert champion.tags["eval.protocol_id"] == nightly["protocol"] != first["protocol"]
    with rec.catalogue() as session:  # champion -> challenger -> dataset version 2 (parent version 1)
        lineage = lineage_of_model_version(session, MODEL, int(row2["version"]))
        assert [a.uri for a in lineage.ancestors] == [row1["checkpoint"]]
        assert (lineage.dataset.name, lineage.dataset.version, lineage.dataset.parent.version) == (NAME, 2, 1)
        assert lineage_of_model_version(session, MODEL, int(row1["version"])).dataset.version == 1

    skipped = retrain_nightly(params=PipelineParams(**TINY_DATA), records=stack["records"])  # nothing new
    assert skipped["skipped"] and "neither the data nor the code changed" in skipped["reason"]
    run = rec.mlflow.get_run(skipped["mlflow_run_id"])
    assert run.data.tags["retrain.decision"] == "skipped" and run.data.tags["retrain.dataset"] == f"{NAME}@2"
    assert {v.version for v in rec.mlflow.search_model_versions(f"name='{MODEL}'")} == {row1["version"], row2["version"]}
