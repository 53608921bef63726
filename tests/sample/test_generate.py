"""Seeded generation: reproducible, the documented draw order, label layout checks, class balance."""
from __future__ import annotations

import pytest
import torch

from groupdiff.config import GuidanceConfig, SamplerConfig
from groupdiff.models import SiT
from groupdiff.sample import class_balanced_labels, generate, make_velocity_fn
from groupdiff.transport import integrate, nfe
from tests.sample.conftest import perturbed_tiny_sit

SHAPE = (2, 8, 8)


@pytest.fixture
def model() -> SiT:
    """Tiny SiT with all weights perturbed (see conftest.perturbed_tiny_sit)."""
    return perturbed_tiny_sit(0.1, in_channels=2)


CASES = [
    (SamplerConfig(method="sde-euler", num_steps=5, seed=3),
     GuidanceConfig(mode="groupdiff-l", group_size=2, cfg_scale=2.0, interval_low=0.3, interval_high=0.8)),
    (SamplerConfig(method="ode-heun", num_steps=4, seed=3),
     GuidanceConfig(mode="groupdiff-f", group_size=2, cfg_scale=1.5)),
    (SamplerConfig(method="ode-euler", num_steps=4, seed=3), GuidanceConfig(cfg_scale=2.0, guide_first_channels=1)),
]


@pytest.mark.parametrize("sampler,guidance", CASES)
def test_same_seed_identical_different_seed_different(model, sampler, guidance):
    labels = class_balanced_labels(4, 2, guidance.group_size)
    a = generate(model, labels, sampler, guidance, SHAPE)
    b = generate(model, labels, sampler, guidance, SHAPE)
    c = generate(model, labels, sampler.model_copy(update={"seed": 4}), guidance, SHAPE)
    assert a.shape == (4, *SHAPE) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_generate_is_noise_then_ids_then_integrate_with_one_generator(model):
    """The documented draw order: initial noise, sample ids, then SDE noise, all from Generator(seed)."""
    sampler, guidance = CASES[0]
    labels = torch.tensor([1, 1, 3, 3])
    out = generate(model, labels, sampler, guidance, SHAPE)
    g = torch.Generator().manual_seed(sampler.seed)
    model.eval()
    with torch.no_grad():
        noise = torch.randn(4, *SHAPE, generator=g)
        ids = model.s_embedder.random_ids(2, 2, "cpu", g)
        expected = integrate(make_velocity_fn(model, labels, guidance, sample_ids=ids), noise, sampler, g)
    assert torch.equal(out, expected)


def test_eval_no_grad_and_mode_restored(model):
    sampler, guidance = CASES[1]
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((m.training, torch.is_grad_enabled(), kwargs["sample_ids"])),
        with_kwargs=True,
    )
    model.train()
    generate(model, [0, 0], sampler, guidance, SHAPE)
    handle.remove()
    assert model.training
    assert len(seen) == nfe(sampler)  # cfg in one batched forward per call
    assert all(not training and not grad for training, grad, _ in seen)
    assert all(torch.equal(seen[0][2], ids[: ids.shape[0] // 2].repeat(2)) for *_, ids in seen)


def test_wrong_label_layout_is_a_clear_error(model):
    sampler, guidance = CASES[0]
    with pytest.raises(ValueError, match="3 labels are not divisible by group_size=2"):
        generate(model, [1, 1, 2], sampler, guidance, SHAPE)
    with pytest.raises(ValueError, match=r"group 1 \(labels\[2:4\]\) mixes labels \[2, 3\]"):
        generate(model, [1, 1, 2, 3], sampler, guidance, SHAPE)
    with pytest.raises(ValueError, match=r"label 9 out of range \[0, 5\]"):
        generate(model, [9, 9], sampler, guidance, SHAPE)
    with pytest.raises(ValueError, match="C = model.in_channels=2"):
        generate(model, [1, 1], sampler, guidance, (3, 8, 8))


def test_class_balanced_labels():
    labels = class_balanced_labels(24, 3, 4)
    assert torch.equal(torch.bincount(labels), torch.tensor([8, 8, 8]))
    groups = labels.reshape(6, 4)
    assert (groups == groups[:, :1]).all()
    assert torch.equal(groups[:3, 0], torch.tensor([0, 1, 2]))  # classes interleave by group
    with pytest.raises(ValueError, match=r"num_samples=10 is not a multiple of num_classes=3 x group_size=2 = 6"):
        class_balanced_labels(10, 3, 2)
