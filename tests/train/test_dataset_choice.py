"""Training reads the dataset ``data.dataset`` names (it once read Fashion-MNIST whatever the config said):
an image folder's own pixels, a missing or empty root fails before any compute naming the path, and a
folder whose images do not fit the model is an error naming the dataset and both shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from groupdiff.config import load_preset
from groupdiff.data.datasets import build_dataset, fetch_items
from groupdiff.train.data import load_dataset


def write_folder(root, mode: str, per_class: int = 12, side: int = 16) -> None:
    rng = np.random.default_rng(0)
    for c in ("bag", "shoe"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (side, side, 3) if mode == "RGB" else (side, side)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


def folder_config(root, *extra: str):
    return load_preset("tiny-fmnist", ["data.dataset=imagefolder", f"data.root={root}", "train.global_batch_images=8",
                                       "train.group_size=4", *extra])


def test_training_reads_the_image_folder_it_is_given(tmp_path):
    write_folder(tmp_path / "rgb", "RGB")
    config = folder_config(tmp_path / "rgb", "model.in_channels=3")
    source, labels = load_dataset(config)
    expected = build_dataset(config.data)
    images = fetch_items(source, np.arange(len(source)))
    assert images.shape == (24, 3, 16, 16) and labels.tolist() == [0] * 12 + [1] * 12
    for i in (0, 13, 23):
        torch.testing.assert_close(images[i], expected[i][0], rtol=0, atol=0)


@pytest.mark.parametrize("make, match", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "holds no images"),
])
def test_a_missing_or_empty_root_fails_naming_the_path(tmp_path, make, match):
    root = tmp_path / "data"
    make(root)
    with pytest.raises((FileNotFoundError, ValueError), match=match) as info:
        load_dataset(folder_config(root))
    assert str(root) in str(info.value) or root.name in str(info.value)


def test_a_folder_that_does_not_fit_the_model_names_both(tmp_path):
    write_folder(tmp_path / "rgb", "RGB")  # 3 channels, the tiny model takes 1
    with pytest.raises(ValueError, match=r"data.dataset='imagefolder' gives images of shape \(24, 3, 16, 16\) "
                                         r"but model expects \(N, 1, 16, 16\)"):
        load_dataset(folder_config(tmp_path / "rgb"))
