"""ImageFolder: ADM centre crop, RGB conversion counted, corrupt files named or skipped, digests."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from groupdiff.data.config import DataConfig
from groupdiff.data.datasets import build_dataset
from groupdiff.data.imagefolder import ImageFolderDataset, center_crop_arr


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        for i in range(3):
            _write(root / c / f"{i}.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    _write(root / "dog" / "gray.png", rng.integers(0, 256, (20, 20), dtype=np.uint8))
    _write(root / "dog" / "rgba.png", rng.integers(0, 256, (20, 20, 4), dtype=np.uint8))
    return root


def test_labels_conversion_and_range(folder):
    ds = ImageFolderDataset(folder, image_size=16)
    assert ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert ds.report()["converted"] == {"L": 1, "RGBA": 1}
    gray = ds.files.index(folder / "dog" / "gray.png")
    x, y = ds[gray]
    assert y == 1 and x.shape == (3, 16, 16)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale -> equal RGB channels
    assert x.min() >= -1 and x.max() <= 1


def test_adm_crop_constant_and_centre():
    const = Image.new("RGB", (90, 60), (200, 10, 30))
    out = np.asarray(center_crop_arr(const, 16))
    assert out.shape == (16, 16, 3) and (out == [200, 10, 30]).all()
    # a wide image whose outer thirds are white: the centre crop keeps only the black middle
    arr = np.full((32, 96, 3), 255, dtype=np.uint8)
    arr[:, 32:64] = 0
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 16))
    assert out[:, 2:-2].max() == 0


def test_empty_folder_and_missing(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderDataset(tmp_path / "empty", 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", 16)


def test_corrupt_and_truncated(folder):
    (folder / "cat" / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolderDataset(folder, 16)
    good = (folder / "cat" / "0.png").read_bytes()
    (folder / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    ds = ImageFolderDataset(folder, 16, skip_corrupt=True)
    assert ds.report()["skipped"] == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in ds.report()["skipped_files"]) == ["broken.png", "truncated.png"]
    assert len(ds) == 8
    # without skip_corrupt the truncated file (valid header) fails on read, naming the file
    (folder / "cat" / "broken.png").unlink()
    lazy = ImageFolderDataset(folder, 16, digest_mode="listing")
    with pytest.raises(ValueError, match="truncated.png"):
        lazy[lazy.files.index(folder / "cat" / "truncated.png")]


def test_digest_content_and_location(folder, tmp_path):
    a = ImageFolderDataset(folder, 16).digest
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert ImageFolderDataset(moved, 16).digest == a  # relative paths: location-independent
    assert ImageFolderDataset(moved, 24).digest != a  # transform is part of the digest
    img = np.asarray(Image.open(moved / "cat" / "1.png")).copy()
    img[0, 0] ^= 1
    _write(moved / "cat" / "1.png", img)
    assert ImageFolderDataset(moved, 16).digest != a


def test_build_dataset_dispatch(folder):
    ds = build_dataset(DataConfig(dataset="imagefolder", root=str(folder), image_size=16, limit=4))
    assert len(ds) == 4
    with pytest.raises(ValueError, match="needs data.root"):
        DataConfig(dataset="imagefolder")
