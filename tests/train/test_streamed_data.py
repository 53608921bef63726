"""Training reads dataset versions through the step loader: the same steps with 0 or 2 workers and from a resumed
position, the same losses as the in-memory path on the same data and seeds (pixels and latents), and a resumed
run with workers ends where an uninterrupted one does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from groupdiff.config import load_preset
from groupdiff.data.config import IngestConfig, VaeConfig
from groupdiff.data.datasets import build_dataset, fetch_items
from groupdiff.data.ingest import ingest_images
from groupdiff.train.data import EpochPlans, class_neighbours
from groupdiff.train.loader import step_loader
from groupdiff.train.trainer import train

from tests.builders import write_image_folder

PIXEL_MODEL = ["model.in_channels=3", "model.input_size=16", "model.patch_size=4", "data.image_size=16"]
LATENT_MODEL = ["model.in_channels=4", "model.input_size=8", "model.patch_size=2", "data.image_size=16"]
SMALL = ["model.name=custom", "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.max_group_size=4",
         "model.num_classes=3", "train.global_batch_images=16", "train.group_size=4", "train.variant=groupdiff-l",
         "train.group_ratio=0.5", "train.log_every=1", "train.checkpoint_every=2", "train.probe_every=0",
         "train.warmup_steps=0", "train.num_threads=1", "train.lr=0.001"]


@pytest.fixture(scope="module")
def versions(tmp_path_factory, tiny_vae):
    """A generated folder (36 images, 3 classes) and its pixel and latent versions."""
    root = tmp_path_factory.mktemp("streamed")
    folder = write_image_folder(root / "src", per_class=12)
    ingest = IngestConfig(image_size=16, on_corrupt="skip", shard_size=5)
    ingest_images(folder, root / "pixels", ingest)
    _, vae_root = tiny_vae
    vae = VaeConfig(weights=str(vae_root / "vae.safetensors"), config_json=str(vae_root / "config.json"))
    ingest_images(folder, root / "latents", ingest.model_copy(update={"encode": "latents"}), vae)
    return root


def _config(kind: str, root, *extra: str):
    model = PIXEL_MODEL if kind == "imagefolder" else LATENT_MODEL
    return load_preset("tiny-fmnist", SMALL + model + [f"data.dataset={kind}", f"data.root={root}", *extra])


def _steps(config, source, labels, start: int, count: int, workers: int, origin=(0, 0)):
    plans = EpochPlans(config, len(labels), {"neighbours": class_neighbours(labels.numpy(), 3, 0)})
    loader = step_loader(source, plans, *origin, count, 1, 2, workers, 2)  # rank 1 of 2
    return [(epoch, index, batch.indices.copy(), x0) for batch, epoch, index, x0 in loader]


def test_the_same_steps_with_workers_and_from_a_resumed_position(versions):
    config = _config("imagefolder", versions / "pixels", "train.steps=8")
    source = build_dataset(config.data)
    labels = torch.as_tensor(source.labels)
    plain = _steps(config, source, labels, 0, 8, workers=0)
    assert len({e for e, *_ in plain}) > 1  # the run crosses an epoch boundary
    for workers in (2,):
        again = _steps(config, source, labels, 0, 8, workers=workers)
        for (e, i, idx, x), (e2, i2, idx2, x2) in zip(plain, again, strict=True):
            assert (e, i) == (e2, i2) and np.array_equal(idx, idx2) and torch.equal(x, x2)
    epoch, index = plain[5][:2]
    resumed = _steps(config, source, labels, 5, 3, workers=2, origin=(epoch, index))
    for (e, i, idx, x), (e2, i2, idx2, x2) in zip(plain[5:], resumed, strict=True):
        assert (e, i) == (e2, i2) and np.array_equal(idx, idx2) and torch.equal(x, x2)
    share = plain[0][2][8:]  # rank 1's half of the first global batch (whole groups of 4)
    torch.testing.assert_close(plain[0][3], fetch_items(source, share), rtol=0, atol=0)


def _losses(run_dir) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"]["loss"] for r in lines if r["kind"] == "metrics" and "loss" in r["metrics"]]


@pytest.mark.parametrize("kind, folder", [("imagefolder", "pixels"), ("latents", "latents")])
def test_a_version_trains_like_the_same_data_in_memory(versions, kind, folder, tmp_path):
    config = _config(kind, versions / folder, "train.steps=2", "data.num_workers=2")
    source = build_dataset(config.data)
    in_memory = (fetch_items(source, np.arange(len(source))), torch.as_tensor(source.labels))
    streamed = train(config, tmp_path / "streamed")
    held = train(config, tmp_path / "memory", data=in_memory)
    a, b = _losses(tmp_path / "streamed"), _losses(tmp_path / "memory")
    assert len(a) == 2 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-6, (a, b)
    weights = [load_file(str(r.checkpoint / "weights.safetensors")) for r in (streamed, held)]
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-5, atol=1e-6)


def test_a_resumed_run_with_workers_ends_like_an_uninterrupted_one(versions, tmp_path):
    common = ("data.num_workers=2", "train.resume=auto")
    straight = train(_config("imagefolder", versions / "pixels", "train.steps=4", *common), tmp_path / "straight")
    train(_config("imagefolder", versions / "pixels", "train.steps=2", *common), tmp_path / "resumed")
    resumed = train(_config("imagefolder", versions / "pixels", "train.steps=4", *common), tmp_path / "resumed")
    assert _losses(tmp_path / "resumed")[2:] == pytest.approx(_losses(tmp_path / "straight")[2:], abs=1e-6)
    a, b = (load_file(str(r.checkpoint / "model.safetensors")) for r in (straight, resumed))
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=1e-5, atol=1e-6)


def test_data_reader_fields_reach_the_step_loader(versions):
    """The step DataLoader takes data.num_workers and data.prefetch_factor (what the trainer passes it) as its
    worker count and per-worker read-ahead."""
    config = _config("imagefolder", versions / "pixels", "data.num_workers=2", "data.prefetch_factor=5")
    source = build_dataset(config.data)
    plans = EpochPlans(config, len(source), None)
    loader = step_loader(source, plans, 0, 0, 3, 0, 1, config.data.num_workers, config.data.prefetch_factor)
    assert (loader.num_workers, loader.prefetch_factor) == (2, 5)
    assert step_loader(source, plans, 0, 0, 3, 0, 1, 0, 5).prefetch_factor is None  # no workers: nothing ahead
