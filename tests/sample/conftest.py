"""Shared fixtures of the sampling tests."""
from __future__ import annotations

import pytest
import torch

from groupdiff.models import SiT


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every sampling test runs with one torch thread."""


def perturbed_tiny_sit(std: float, in_channels: int = 2) -> SiT:
    """Tiny SiT (8x8, 5 classes, groups up to 4, learn_sigma) with every weight drawn from N(0, std^2):
    a fresh SiT outputs 0 because of adaLN-Zero, which would hide the guidance arithmetic."""
    torch.manual_seed(0)
    model = SiT(input_size=8, patch_size=2, in_channels=in_channels, hidden_size=32, depth=2, num_heads=2,
                num_classes=5, max_group_size=4, learn_sigma=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model
