"""VAE encode stage with a tiny random AutoencoderKL: stored latents equal a direct encode; restart; dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from groupdiff.data.config import DataConfig, VaeConfig
from groupdiff.data.datasets import build_dataset
from groupdiff.data.imagefolder import ImageFolderDataset
from groupdiff.data.latents import build_vae, encode_latents
from groupdiff.data.shards import shard_path


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(7):
        path = tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return ImageFolderDataset(tmp_path / "imgs", 16)


def test_missing_weights_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.vae.weights"):
        build_vae(VaeConfig(weights=str(tmp_path / "none.safetensors")))
    with pytest.raises(FileNotFoundError, match="no weights configured"):
        build_vae(VaeConfig())


def test_latents_equal_direct_encode_and_restart(tiny_vae, images, tmp_path):
    vae, root = tiny_vae
    cfg = VaeConfig(weights=str(root / "vae.safetensors"), config_json=str(root / "config.json"), batch_size=3, shard_size=3)
    out = tmp_path / "lat"
    first = encode_latents(images, cfg, out)
    assert first["computed"] == [0, 1, 2] and first["complete"]
    with torch.no_grad():
        x = torch.stack([images[i][0] for i in range(len(images))])
        expected = vae.encode(x).latent_dist.mean * cfg.scaling_factor
    ds = build_dataset(DataConfig(dataset="latents", root=str(out)))
    got = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.allclose(got, expected, atol=1e-5)
    assert ds.labels.tolist() == images.labels.tolist() and ds.channels == 4
    # a folder-format VAE gives the same latents; the diffusers folder path also loads offline
    folder_vae, _ = build_vae(VaeConfig(weights=str(root / "folder")))
    with torch.no_grad():
        assert torch.allclose(folder_vae.encode(x).latent_dist.mean * cfg.scaling_factor, expected, atol=1e-5)
    # restart: only the missing shard is recomputed and the result is unchanged
    shard_path(out, "lat", 1).unlink()
    again = encode_latents(images, cfg, out)
    assert again["computed"] == [1] and again["skipped"] == [0, 2]
    assert torch.allclose(torch.stack([build_dataset(DataConfig(dataset="latents", root=str(out)))[i][0]
                                       for i in range(len(ds))]), expected, atol=1e-5)


def test_grayscale_dataset_rejected(tiny_vae, tmp_path):
    from groupdiff.data.datasets import fmnist_dataset

    vae, root = tiny_vae
    cfg = VaeConfig(weights=str(root / "vae.safetensors"), config_json=str(root / "config.json"))
    with pytest.raises(ValueError, match="3-channel"):
        encode_latents(fmnist_dataset("test", 16, 4), cfg, tmp_path / "x")
