"""Dataset versions: publish a version folder to the object store (manifest last, identical content a no-op,
nothing left on failure), number versions in the catalogue (identical content = no new version) and resolve
'name', 'name@latest', 'name@N' (an unknown version names the versions that exist)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groupdiff.data.config import IngestConfig
from groupdiff.data.ingest import ingest_images
from groupdiff.data.sharded import MANIFEST, ShardedDataset
from registry.catalogue import open_session
from registry.datasets import publish_version, readable_root, record_dataset_version, resolve_dataset
from registry.stores import open_store

CLASSES = ("circle", "square", "stripes")


def class_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size RGB image of class ``label``: a class colour and shape, with noise and a random shift."""
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.integers(-2, 3, 2)
    shapes = [(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 3) ** 2,
              (abs(yy - c[0]) < size / 3) & (abs(xx - c[1]) < size / 3),
              (xx // 3) % 2 == 0]
    colour = np.eye(3)[label % 3] * 200 + 30
    image = shapes[label % 3][..., None] * colour + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, per_class: int, size: int = 16, seed: int = 0, corrupt: bool = False) -> Path:
    """An ImageFolder of PNGs (``root/<class>/<i>.png``), ``per_class`` images per class, optionally one corrupt
    file; the same arguments always write the same bytes."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(class_image(label, size, rng)).save(root / name / f"{i:04d}.png")
    if corrupt:
        (root / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.fixture()
def versions(tmp_path):
    """Two ingested version folders of one source (v2 = v1 plus more images) and a copy of v1."""
    cfg = IngestConfig(image_size=16, shard_size=8, on_corrupt="skip")
    src = make_image_folder(tmp_path / "src", per_class=4, corrupt=True)
    v1 = ingest_images(src, tmp_path / "v1", cfg)
    again = ingest_images(src, tmp_path / "v1-again", cfg)
    make_image_folder(tmp_path / "src", per_class=6)
    v2 = ingest_images(src, tmp_path / "v2", cfg)
    return v1, again, v2


def test_publish_record_resolve(tmp_path, versions):
    v1, again, v2 = versions
    assert again["digest"] == v1["digest"] != v2["digest"] and v1["corrupt"] == ["circle/broken.png"]
    store = open_store(f"file://{tmp_path / 'store'}")
    uri = publish_version(store, v1["out"], "shapes")
    prefix = f"datasets/shapes/{v1['digest']}"
    assert uri == store.uri(prefix)
    keys = store.list(prefix)
    assert f"{prefix}/{MANIFEST}" in keys and f"{prefix}/labels.npy" in keys and len(keys) == 2 + 2  # 12 items / 8
    stamp = (tmp_path / "store" / prefix / MANIFEST).stat().st_mtime_ns
    assert publish_version(store, again["out"], "shapes") == uri  # identical content: nothing is written
    assert (tmp_path / "store" / prefix / MANIFEST).stat().st_mtime_ns == stamp
    read = ShardedDataset(readable_root(uri))  # the published version reads back, same content digest
    assert read.digest == v1["digest"] and len(read) == 12 and read.classes == list(CLASSES)

    sessions = open_session(f"sqlite:///{tmp_path / 'catalogue.db'}")
    with sessions.begin() as session:
        row1, created1 = record_dataset_version(session, "shapes", v1, uri, {"path": "src"})
        row1b, created1b = record_dataset_version(session, "shapes", again, uri, {"path": "src"})
        uri2 = publish_version(store, v2["out"], "shapes")
        row2, created2 = record_dataset_version(session, "shapes", v2, uri2, {"path": "src"})
        assert (row1.version, created1, created1b, row1b.id) == (1, True, False, row1.id)
        assert (row2.version, row2.parent.id, created2) == (2, row1.id, True)
        assert row2.counts == {"circle": 6, "square": 6, "stripes": 6} and row1.counts["circle"] == 4
        assert row2.kind == "pixels" and row2.uri == uri2
    with sessions() as session:
        assert resolve_dataset(session, "shapes").version == 2
        assert resolve_dataset(session, "shapes@latest").version == 2
        assert resolve_dataset(session, "shapes@1").digest == v1["digest"]
        with pytest.raises(LookupError, match=r"'shapes@3'.*no version 3; its versions are \[1, 2\]"):
            resolve_dataset(session, "shapes@3")
        with pytest.raises(LookupError, match=r"'cars'.*no versions of 'cars'.*\['shapes'\]"):
            resolve_dataset(session, "cars")
        for bad in ("shapes@0", "shapes@v2", "a/b", ""):
            with pytest.raises(ValueError, match="expected 'NAME', 'NAME@latest' or 'NAME@N'"):
                resolve_dataset(session, bad)


def test_failed_publish_leaves_nothing(tmp_path, versions):
    v1 = versions[0]
    shard = Path(v1["out"]) / "items-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-4] + b"\0\0\0\1")  # changed after the manifest was written
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(ValueError, match="items-00001.npy: sha256 .* does not match"):
        publish_version(store, v1["out"], "shapes")
    assert store.list("datasets") == []  # the shard sent before it was deleted again; no manifest ever written


def test_groupdiff_check_verifies_a_version_against_its_dataset_json(tmp_path, versions):
    """``groupdiff check`` reads an ingested version as the folder its dataset.json (not a manifest.json) completes:
    clean as published; a deleted shard is missing and a changed one corrupt against the sha256 dataset.json lists,
    each naming the version's catalogue row; without dataset.json the version was never completed."""
    from registry.consistency import CORRUPT, MISSING, check

    store = open_store(f"file://{tmp_path / 'store'}")
    uri = publish_version(store, versions[0]["out"], "shapes")
    prefix = f"datasets/shapes/{versions[0]['digest']}"
    sessions = open_session(f"sqlite:///{tmp_path / 'catalogue.db'}")
    with sessions.begin() as session:
        record_dataset_version(session, "shapes", versions[0], uri)

    def problems():
        with sessions() as session:
            return check(store, session).problems

    assert problems() == []
    row = ["catalogue datasets #1 (shapes v1)"]
    shard = f"{prefix}/items-00001.npy"
    data = (store.path / shard).read_bytes()
    store.put_bytes(shard, data[:-1] + bytes([data[-1] ^ 1]))  # through the store: only dataset.json knows
    [bad] = problems()
    assert (bad.kind, bad.target, bad.referenced_by) == (CORRUPT, store.uri(shard), row)
    assert f"{MANIFEST} lists sha256" in bad.detail
    store.delete(shard)
    [gone] = problems()
    assert (gone.kind, gone.target, gone.referenced_by) == (MISSING, store.uri(shard), row)
    assert gone.detail.startswith(f"listed in {MANIFEST} (sha256 ")
    store.delete(f"{prefix}/{MANIFEST}")
    [incomplete] = problems()
    assert (incomplete.kind, incomplete.target) == (MISSING, store.uri(f"{prefix}/{MANIFEST}"))
    assert "never completed" in incomplete.detail
