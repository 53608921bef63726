"""Tiny training setups shared by the training tests: a 2-block SiT on 16x16 Fashion-MNIST."""
from __future__ import annotations

import pytest
import torch

from groupdiff.config import load_preset

TINY = [
    "model.name=custom", "model.depth=2", "model.hidden_size=64", "model.num_heads=4", "model.patch_size=4",
    "model.input_size=16", "model.max_group_size=8", "data.image_size=16", "data.limit=256",
    "train.global_batch_images=32", "train.steps=4", "train.log_every=1", "train.checkpoint_every=2",
    "train.keep_last=2", "train.probe_every=0", "train.lr=0.001", "train.warmup_steps=0", "train.ema_decay=0.9", "train.num_threads=1",
]


def tiny_config(*overrides: str):
    """The tiny-fmnist preset shrunk for tests, with extra ``section.field=value`` overrides."""
    return load_preset("tiny-fmnist", TINY + list(overrides))


@pytest.fixture(name="tiny_config", scope="session")
def tiny_config_fixture():
    """Factory: ``tiny_config("train.variant=groupdiff-f", ...)``."""
    return tiny_config


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The overrides that shrink the preset (for runs started through the CLI)."""
    return list(TINY)


@pytest.fixture(scope="session")
def fmnist_small():
    """(images, labels): the first 256 training images at 16x16."""
    from groupdiff.data.fmnist import load_fmnist

    return load_fmnist("train", 16, 256)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield
