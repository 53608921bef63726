"""Dataset versions (``groupdiff ingest``'s library half and the shard reader): the same items as the image
folder they came from, corrupt files reported by path, identical content = identical digest, a tar source = its
folder, latents = a direct VAE encode, and the same items read back from the S3 server (with a damaged download
refused and never cached)."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch

from groupdiff.data.config import DataConfig, IngestConfig, VaeConfig
from groupdiff.data.datasets import build_dataset, fetch_items
from groupdiff.data.ingest import ingest_images
from groupdiff.data.remote import STORE_FACTORY_ENV
from groupdiff.data.sharded import LABELS, MANIFEST, ShardedDataset

from tests.builders import write_image_folder


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "src")


def test_a_version_holds_the_folders_pixels_and_names_the_corrupt_files(folder, tmp_path):
    report = ingest_images(folder, tmp_path / "v", IngestConfig(image_size=16, on_corrupt="skip", shard_size=4))
    assert sorted(report["corrupt"]) == ["bag/truncated.png", "shoe/notes.txt"]
    assert report["counts"] == {"bag": 6, "coat": 6, "shoe": 6} and report["num_items"] == 18
    version = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "v"), image_size=16))
    direct = build_dataset(DataConfig(dataset="imagefolder", root=str(folder), image_size=16, skip_corrupt=True))
    assert len(version.manifest.shards) == 5  # 18 items in shards of 4
    np.testing.assert_array_equal(version.labels, direct.labels)
    order = np.random.default_rng(0).permutation(len(direct))  # random access across shards, as groups need
    torch.testing.assert_close(fetch_items(version, order), fetch_items(direct, order), rtol=0, atol=0)
    assert version.digest == report["digest"] and version.report()["skipped_files"] == report["corrupt"]

    def limited(n):
        return build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "v"), image_size=16, limit=n))

    assert limited(18).digest == report["digest"] != limited(17).digest  # a limit keeping every item: the version


def test_fail_policy_names_every_bad_file_and_writes_nothing(folder, tmp_path):
    with pytest.raises(ValueError, match=r"2 corrupt or non-image files: \['bag/truncated.png', 'shoe/notes.txt'\]"):
        ingest_images(folder, tmp_path / "v", IngestConfig(image_size=16))
    assert not (tmp_path / "v").exists()


def test_identical_content_has_one_digest_and_a_tar_is_its_folder(folder, tmp_path):
    config = IngestConfig(image_size=16, on_corrupt="skip", shard_size=7)
    first = ingest_images(folder, tmp_path / "a", config)
    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="images")  # one top folder holding the class folders
    again = ingest_images(tmp_path / "src.tar.gz", tmp_path / "b", config)
    assert again["digest"] == first["digest"] and again["counts"] == first["counts"]
    write_image_folder(folder, per_class=2, seed=1, bad=False)  # two new images per class
    grown = ingest_images(folder, tmp_path / "c", config)
    assert grown["digest"] != first["digest"] and grown["num_items"] == first["num_items"] + 6
    with pytest.raises(FileExistsError, match="already holds a dataset version"):
        ingest_images(folder, tmp_path / "a", config)


def test_latent_version_equals_a_direct_encode(folder, tmp_path, tiny_vae):
    vae, root = tiny_vae
    vae_config = VaeConfig(weights=str(root / "vae.safetensors"), config_json=str(root / "config.json"), batch_size=5)
    report = ingest_images(folder, tmp_path / "lat", IngestConfig(image_size=16, on_corrupt="skip", encode="latents"),
                           vae_config)
    assert report["kind"] == "latents" and report["item_shape"] == [4, 8, 8]
    version = build_dataset(DataConfig(dataset="latents", root=str(tmp_path / "lat")))
    pixels = build_dataset(DataConfig(dataset="imagefolder", root=str(folder), image_size=16, skip_corrupt=True))
    with torch.no_grad():
        expected = vae.encode(fetch_items(pixels, np.arange(len(pixels)))).latent_dist.mean * vae_config.scaling_factor
    torch.testing.assert_close(fetch_items(version, np.arange(len(version))), expected, rtol=1e-5, atol=1e-5)


def test_a_version_of_the_wrong_kind_or_size_names_both(folder, tmp_path):
    ingest_images(folder, tmp_path / "v", IngestConfig(image_size=16, on_corrupt="skip"))
    with pytest.raises(ValueError, match=r"data.dataset='latents' reads latents, but .* holds pixels \(set data.dataset='imagefolder'\)"):
        build_dataset(DataConfig(dataset="latents", root=str(tmp_path / "v")))
    with pytest.raises(ValueError, match=r"data.image_size=32 but .* holds 16 px images"):
        build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "v"), image_size=32))


def _upload(store, folder) -> None:
    """Every file of a version folder, the manifest last (what ``registry.datasets`` does)."""
    for path in sorted(folder.iterdir(), key=lambda p: p.name == MANIFEST):
        store.put_file(path.name, path)


@pytest.fixture
def scratch_store(stack_env):
    """(root, store): a fresh folder of the session stack's S3 store, emptied after the test (the stack is shared:
    its consistency checks in tests/flows/test_stack.py would report what is left as unreferenced)."""
    import uuid

    from registry.stores import open_store

    root = f"{stack_env['GROUPDIFF_STORE_ROOT']}/tests/datasets/{uuid.uuid4().hex[:8]}"
    store = open_store(root)
    yield root, store
    for key in store.list(""):
        store.delete(key)


def test_the_same_items_read_back_from_the_s3_server(scratch_store, folder, tmp_path, monkeypatch):
    root, store = scratch_store
    monkeypatch.setenv(STORE_FACTORY_ENV, "registry.stores:open_store")
    ingest_images(folder, tmp_path / "v", IngestConfig(image_size=16, on_corrupt="skip", shard_size=4))
    _upload(store, tmp_path / "v")
    local = ShardedDataset(tmp_path / "v")
    remote = build_dataset(DataConfig(dataset="imagefolder", root=root, image_size=16, cache_dir=str(tmp_path / "cache")))
    order = np.random.default_rng(1).permutation(len(local))
    torch.testing.assert_close(fetch_items(remote, order), fetch_items(local, order), rtol=0, atol=0)
    cached = sorted(p.name for p in (tmp_path / "cache" / local.digest).iterdir())
    assert cached == sorted([LABELS] + [s["file"] for s in local.manifest.shards])

    # a shard whose bytes differ from the manifest's sha256 is refused and never enters the cache
    bad_shard = local.manifest.shards[1]["file"]
    tampered = tmp_path / "tampered.npy"
    np.save(tampered, np.zeros((4, 3, 16, 16), dtype=np.uint8))
    store.put_file(bad_shard, tampered)
    fresh = ShardedDataset(root, cache_dir=tmp_path / "cache2")
    with pytest.raises(ValueError, match=f"{bad_shard}: downloaded bytes do not match the manifest's sha256"):
        fresh.fetch(np.asarray([5]))
    assert not (tmp_path / "cache2" / local.digest / bad_shard).exists()

    with pytest.raises(FileNotFoundError, match=f"data.root='{root}/nothing': no dataset.json there"):
        ShardedDataset(f"{root}/nothing", cache_dir=tmp_path / "cache3")


def test_an_object_store_root_without_the_store_factory_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv(STORE_FACTORY_ENV, raising=False)
    with pytest.raises(ValueError, match=f"{STORE_FACTORY_ENV} is not set"):
        build_dataset(DataConfig(dataset="latents", root="s3://bucket/datasets/x"))
