"""``groupdiff check`` on the embedded records (file:// store, SQLite catalogue, MLflow on SQLite): clean
records pass; a deleted, truncated or corrupted object, an incomplete folder, a deleted MLflow model file and a
leftover object are each named with the rows that point at them; a file deleted or changed inside a folder
whose manifest is still there is found through the manifest's file list. The same check on the local stack
(SeaweedFS, PostgreSQL, MLflow server) runs in tests/flows/test_restart.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from infra.cli import main
from groupdiff.config import GuidanceConfig, ModelConfig, SamplerConfig
from groupdiff.models import build_model
from registry.catalogue.db import open_session
from registry.catalogue.records import (
    record_checkpoint, record_dataset, record_embedding_set, record_evaluation, record_group_table,
    record_model_version, record_weights,
)
from registry.consistency import CORRUPT, MISSING, UNREFERENCED, UNVERIFIABLE, check
from registry.layout import checkpoint_prefix, embeddings_prefix, groups_prefix, samples_key, weights_key
from registry.manifest import MANIFEST, publish_folder
from registry.mlflow_model import log_groupdiff_model
from registry.stores import open_store

MODEL = ModelConfig(name="custom", depth=1, hidden_size=32, num_heads=2, patch_size=4, input_size=8, in_channels=1,
                    num_classes=3, learn_sigma=False, max_group_size=4)
CKPT = checkpoint_prefix("baseline-abc", 2)
CLASSIFIER = weights_key("classifier/clf1")
SAMPLES = samples_key("baseline-abc", "ev1")


def _folder(store, prefix: str, files: dict[str, bytes], tmp_path: Path) -> str:
    """Publish ``files`` as the pipeline does: each file, then the manifest listing them (written last)."""
    folder = tmp_path / "work" / prefix
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    publish_folder(store, prefix, folder, {"stage": prefix.split("/")[0]})
    return store.uri(prefix)


@pytest.fixture
def records(tmp_path):
    """A small, consistent set of records: store objects, catalogue rows, one registered MLflow model."""
    store = open_store(f"file://{tmp_path / 'store'}")
    catalogue = f"sqlite:///{tmp_path / 'catalogue.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    emb = _folder(store, embeddings_prefix("pixels", "e1"), {"shard-0.npy": b"e" * 100}, tmp_path)
    groups = _folder(store, groups_prefix("g1"), {"groups.npz": b"g" * 50}, tmp_path)
    ckpt = _folder(store, CKPT, {"model.safetensors": b"w" * 300, "config.json": b"{}"}, tmp_path)
    clf = _folder(store, CLASSIFIER, {"classifier.safetensors": b"c" * 80}, tmp_path)
    store.put_bytes(SAMPLES, b"s" * 200)
    store.put_bytes(SAMPLES.replace("samples.npz", "scores/d1/metrics.json"), b"{}")  # the evaluation's folder
    client = mlflow.MlflowClient(tracking)
    experiment = client.create_experiment("check", artifact_location=(tmp_path / "mlartifacts").as_uri())
    mlflow.set_tracking_uri(tracking)
    try:
        torch.manual_seed(0)
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_groupdiff_model(build_model(MODEL).eval(), MODEL, SamplerConfig(num_steps=2),
                                       GuidanceConfig(), registered_model_name="gd-check")
    finally:
        mlflow.set_tracking_uri(None)
    version = int(info.registered_model_version)
    client.set_model_version_tag("gd-check", str(version), "groupdiff.checkpoint", ckpt)
    client.set_model_version_tag("gd-check", str(version), "groupdiff.samples", store.uri(SAMPLES))
    factory = open_session(catalogue)
    with factory.begin() as session:
        ds = record_dataset(session, "fmnist-train", "d1", "builtin://fmnist-train")
        record_weights(session, "classifier", "clf1", clf)
        es = record_embedding_set(session, ds, "pixels", "e1", emb)
        gt = record_group_table(session, es, "g1", groups)
        cp = record_checkpoint(session, run.info.run_id, 2, "c1", ckpt, ds, gt)
        ev = record_evaluation(session, cp, "proto-1", "fd_fmnist", 12.5, "s1", store.uri(SAMPLES))
        record_model_version(session, "gd-check", version, ckpt, cp, ev, run.info.run_id)
    return store, factory, tracking, tmp_path


def _check(records, verify_data: bool = True):
    store, factory, tracking, _ = records
    with factory() as session:
        return check(store, session, tracking, verify_data)


def test_consistent_records_are_clean(records):
    report = _check(records)
    assert report.problems == [] and report.exit_code == 0
    assert report.rows == 7 and report.model_versions == 1 and report.objects_verified == 10
    assert report.outside == ["builtin://fmnist-train"]


def test_a_deleted_object_is_named_with_every_row_that_points_to_it(records, capsys):
    store, _, tracking, tmp_path = records
    store.delete(SAMPLES)
    report = _check(records)
    assert report.exit_code == 1
    [missing] = report.of(MISSING)
    assert missing.target == store.uri(SAMPLES)
    assert sorted(missing.referenced_by) == ["catalogue evaluations #1 (fd_fmnist=12.5, protocol proto-1)",
                                             "mlflow model gd-check v1 (tag groupdiff.samples)"]
    assert report.of(CORRUPT) == []
    # the evaluation's other objects are now owned by nothing
    assert [p.target for p in report.of(UNREFERENCED)] == [store.uri(SAMPLES.replace("samples.npz", "scores/d1/metrics.json"))]
    # the command line says the same and exits non-zero
    code = main(["check", "--store-root", store.root, "--catalogue-url", f"sqlite:///{tmp_path / 'catalogue.db'}",
                 "--mlflow-uri", tracking])
    out = capsys.readouterr().out
    assert code == 1
    assert f"MISSING      {store.uri(SAMPLES)}" in out and "referenced by catalogue evaluations #1" in out
    assert "1 missing, 0 corrupt, 1 unreferenced" in out


def test_a_folder_without_its_manifest_is_missing_and_names_the_checkpoint_and_model_version(records):
    store = records[0]
    store.delete(f"{CKPT}/manifest.json")
    [missing] = _check(records).of(MISSING)
    assert missing.target == store.uri(f"{CKPT}/manifest.json") and "never completed" in missing.detail
    assert set(missing.referenced_by) == {"catalogue checkpoints #1 (run " + missing.referenced_by[0].split("(run ")[1],
                                          "catalogue model_versions #1 (gd-check v1)",
                                          "mlflow model gd-check v1 (tag groupdiff.checkpoint)"}
    for key in store.list(CKPT):
        store.delete(key)
    [gone] = _check(records).of(MISSING)
    assert gone.target == store.uri(CKPT) and gone.detail == "no object at this URI or under it"


CKPT_ROWS = ("catalogue checkpoints #1 (run ", "catalogue model_versions #1 (gd-check v1)",
             "mlflow model gd-check v1 (tag groupdiff.checkpoint)")


def test_a_file_deleted_inside_a_folder_whose_manifest_is_kept_is_missing_with_its_rows(records, capsys):
    store, _, tracking, tmp_path = records
    key = f"{CKPT}/model.safetensors"
    (store.path / key).unlink()  # by hand, behind the store's back: the manifest and config.json stay
    assert store.exists(f"{CKPT}/{MANIFEST}") and store.exists(f"{CKPT}/config.json")
    report = _check(records)
    assert report.exit_code == 1 and report.of(CORRUPT) == [] and report.of(UNREFERENCED) == []
    [missing] = report.of(MISSING)
    assert missing.target == store.uri(key)
    assert "listed in manifest.json (300 bytes" in missing.detail
    assert len(missing.referenced_by) == 3
    assert all(any(who.startswith(row) for who in missing.referenced_by) for row in CKPT_ROWS), missing.referenced_by
    assert _check(records, verify_data=False).of(MISSING) == [missing]  # no data read needed
    code = main(["check", "--store-root", store.root, "--catalogue-url", f"sqlite:///{tmp_path / 'catalogue.db'}",
                 "--mlflow-uri", tracking, "--no-verify-data"])
    out = capsys.readouterr().out
    assert code == 1 and f"MISSING      {store.uri(key)}" in out
    assert "referenced by catalogue checkpoints #1" in out and "referenced by catalogue model_versions #1" in out
    assert "1 missing, 0 corrupt, 0 unreferenced" in out


def test_the_classifier_weights_are_referenced_by_their_row(records):
    store = records[0]
    key = f"{CLASSIFIER}/classifier.safetensors"
    assert _check(records).of(UNREFERENCED) == []
    store.delete(key)
    [missing] = _check(records).of(MISSING)
    assert missing.target == store.uri(key) and missing.referenced_by == ["catalogue weights #1 (classifier, digest clf1)"]


def test_a_file_changed_inside_a_folder_is_corrupt_against_its_manifest(records):
    store = records[0]
    key = f"{CKPT}/model.safetensors"
    data = bytearray((store.path / key).read_bytes())
    data[123] ^= 0x01  # one byte, by hand
    (store.path / key).write_bytes(bytes(data))
    [bad] = _check(records).of(CORRUPT)
    assert bad.target == store.uri(key) and len(bad.referenced_by) == 3
    # rewritten through the store: the store's own record agrees with the new bytes, only the manifest knows
    store.put_bytes(key, bytes(data))
    report = _check(records)
    [bad] = report.of(CORRUPT)
    assert bad.target == store.uri(key) and "manifest.json lists sha256" in bad.detail and report.exit_code == 1
    assert _check(records, verify_data=False).of(CORRUPT) == []  # the sha256 is compared only when reading
    store.put_bytes(key, bytes(data[:-1]))  # a size change is caught from the records alone
    [bad] = _check(records, verify_data=False).of(CORRUPT)
    assert bad.target == store.uri(key) and "299 bytes in the store, manifest.json lists 300 bytes" in bad.detail


def test_an_old_manifest_without_a_file_list_is_unverifiable_not_an_error(records, capsys):
    store = records[0]
    manifest = json.loads(store.get_bytes(f"{groups_prefix('g1')}/{MANIFEST}"))
    store.put_bytes(f"{groups_prefix('g1')}/{MANIFEST}", json.dumps({"stage": manifest["stage"]}).encode())
    report = _check(records)
    assert [(p.kind, p.target) for p in report.problems] == [(UNVERIFIABLE, store.uri(groups_prefix("g1")))]
    assert report.problems[0].detail.startswith("unverifiable: manifest lists no files")
    assert report.problems[0].referenced_by == ["catalogue group_tables #1 (digest g1)"]
    assert report.exit_code == 0
    # a malformed list is an error that names the bad entry
    store.put_bytes(f"{groups_prefix('g1')}/{MANIFEST}", json.dumps({"files": ["groups.npz"]}).encode())
    [bad] = _check(records).of(CORRUPT)
    assert bad.target == store.uri(f"{groups_prefix('g1')}/{MANIFEST}") and "'groups.npz'" in bad.detail


def test_changed_bytes_are_corrupt_and_a_size_change_is_caught_without_reading(records):
    store = records[0]
    key = f"{CKPT}/model.safetensors"
    (store.path / key).write_bytes(b"w" * 299 + b"x")  # same size, other bytes
    [bad] = _check(records).of(CORRUPT)
    assert bad.target == store.uri(key) and "sha256" in bad.detail and "checkpoints #1" in bad.referenced_by[0]
    assert _check(records, verify_data=False).of(CORRUPT) == []  # only reading finds a same-size change
    (store.path / key).write_bytes(b"w" * 10)
    assert [p.target for p in _check(records, verify_data=True).of(CORRUPT)] == [store.uri(key)]
    assert _check(records).exit_code == 1


def test_a_leftover_object_is_unreferenced_but_not_an_error(records):
    store = records[0]
    store.put_bytes("weights/orphan.bin", b"o")
    report = _check(records)
    assert [(p.kind, p.target) for p in report.problems] == [(UNREFERENCED, store.uri("weights/orphan.bin"))]
    assert report.exit_code == 0


def test_a_deleted_mlflow_model_file_and_an_unknown_version_are_missing(records):
    from sqlalchemy import update

    from registry.catalogue.models import ModelVersion

    store, factory, _, tmp_path = records
    [weights] = list((tmp_path / "mlartifacts").rglob("weights.safetensors"))
    weights.unlink()
    [missing] = _check(records).of(MISSING)
    assert missing.target.endswith("/artifacts/weights.safetensors") and missing.referenced_by == ["mlflow model gd-check v1"]
    shutil.rmtree(weights.parent.parent)  # the whole model folder, MLmodel included
    [missing] = _check(records).of(MISSING)
    assert missing.target.endswith("/MLmodel") and "cannot be loaded" in missing.detail
    with factory.begin() as session:
        session.execute(update(ModelVersion).values(version=7))
    problems = {p.target: p for p in _check(records).of(MISSING)}
    assert "models:/gd-check/7" in problems
    assert problems["models:/gd-check/7"].referenced_by == ["catalogue model_versions (gd-check v7)"]
