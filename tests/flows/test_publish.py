"""Folder artefacts of the flows (flows.data_tasks publish / already_published / fetch) on the embedded store:
the manifest, written last, lists every file with its size and sha256; reuse and download check against it."""
from __future__ import annotations

import json

import pytest

from flows.data_tasks import MANIFEST, already_published, fetch, publish
from flows.records import Records, RecordsConfig
from registry.objectstore import sha256_file

PREFIX = "checkpoints/baseline-abc/00000002"


@pytest.fixture
def published(tmp_path):
    rec = Records(RecordsConfig(out=str(tmp_path / "out"), use_env=False))
    folder = tmp_path / "made"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 300)
    (folder / "sub" / "config.json").write_bytes(b"{}")
    uri = publish(rec, PREFIX, folder, {"digest": "abc", "step": 2})
    return rec, folder, uri


def test_the_manifest_lists_every_file_and_is_written_last(published):
    rec, folder, uri = published
    assert uri == rec.store.uri(PREFIX)
    manifest = json.loads(rec.store.get_bytes(f"{PREFIX}/{MANIFEST}"))
    assert manifest["digest"] == "abc" and manifest["step"] == 2
    assert manifest["files"] == [
        {"name": "model.safetensors", "size": 300, "sha256": sha256_file(folder / "model.safetensors")},
        {"name": "sub/config.json", "size": 2, "sha256": sha256_file(folder / "sub" / "config.json")},
    ]
    assert json.loads((folder / MANIFEST).read_text()) == manifest  # the local copy
    # the stage's fields come back without the file list, as the stage returned them
    assert already_published(rec, PREFIX) == {"digest": "abc", "step": 2}
    with pytest.raises(ValueError, match="'files' is written by publish_folder"):
        publish(rec, PREFIX, folder, {"files": []})


def test_a_broken_artefact_is_not_reused(published, tmp_path):
    rec, _, _ = published
    (rec.store.path / PREFIX / "model.safetensors").unlink()  # by hand: the manifest stays
    assert already_published(rec, PREFIX) is None  # the stage computes it again
    with pytest.raises(ValueError, match=r"model.safetensors: listed in manifest.json \(300 bytes\) but not in"):
        fetch(rec, PREFIX, tmp_path / "fetched")
    rec.store.put_bytes(f"{PREFIX}/model.safetensors", b"w" * 299 + b"x")  # through the store: records agree
    assert already_published(rec, PREFIX) is None  # the recorded sha256 differs from the manifest's
    with pytest.raises(ValueError, match="model.safetensors: sha256 [0-9a-f]{64}, manifest.json lists"):
        fetch(rec, PREFIX, tmp_path / "fetched2")
    assert not (tmp_path / "fetched2" / MANIFEST).exists()  # a later fetch downloads again


def test_fetch_downloads_verifies_and_replaces_a_damaged_local_copy(published, tmp_path):
    rec, folder, _ = published
    dest = tmp_path / "fetched"
    assert fetch(rec, PREFIX, dest) == dest
    assert (dest / "model.safetensors").read_bytes() == b"w" * 300 and (dest / "sub" / "config.json").is_file()
    (dest / "model.safetensors").write_bytes(b"w" * 10)  # a truncated local copy is noticed from its size
    fetch(rec, PREFIX, dest)
    assert (dest / "model.safetensors").read_bytes() == b"w" * 300
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        fetch(rec, "checkpoints/never/00000001", tmp_path / "none")


def test_an_old_manifest_without_a_file_list_is_still_read(published, tmp_path):
    rec, _, _ = published
    rec.store.put_bytes(f"{PREFIX}/{MANIFEST}", json.dumps({"digest": "abc"}).encode())
    assert already_published(rec, PREFIX) == {"digest": "abc"}
    assert (fetch(rec, PREFIX, tmp_path / "old") / "model.safetensors").is_file()
