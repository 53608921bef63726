"""Training timesteps (one per group) and the per-image velocity loss against closed forms."""
from __future__ import annotations

import pytest
import torch

from groupdiff.config import TransportConfig
from groupdiff.models import SiT
from groupdiff.transport import sample_timesteps, training_losses


class ExactVelocity(torch.nn.Module):
    """The Bayes-optimal velocity for Gaussian data (channels = dimensions); optional sigma channels."""

    def __init__(self, gaussian, learn_sigma: bool = False):
        super().__init__()
        self.gaussian, self.learn_sigma, self.calls = gaussian, learn_sigma, []

    def forward(self, x, t, y, group_size=1, sample_ids=None):
        self.calls.append(dict(t=t.clone(), y=y.clone(), group_size=group_size, sample_ids=sample_ids))
        v = self.gaussian.velocity(x, t)
        return torch.cat([v, 100 + torch.randn_like(v)], dim=1) if self.learn_sigma else v


def test_one_timestep_per_group_without_offset():
    config = TransportConfig(train_t_min=0.1, train_t_max=0.9)
    t = sample_timesteps(4000, 4, config, torch.Generator().manual_seed(0))
    groups = t.reshape(4000, 4)
    assert (groups == groups[:, :1]).all()
    assert groups[:, 0].unique().numel() == 4000
    assert t.min() >= 0.1 and t.max() <= 0.9
    # uniform on [0.1, 0.9]: mean 0.5, variance 0.8^2 / 12
    assert abs(groups[:, 0].mean().item() - 0.5) < 0.01
    assert abs(groups[:, 0].var().item() - 0.64 / 12) < 0.003


def test_intra_group_offset_stays_within_offset_and_range():
    config = TransportConfig(group_t_offset=0.1)
    t = sample_timesteps(2000, 4, config, torch.Generator().manual_seed(1)).reshape(2000, 4)
    spread = t.max(1).values - t.min(1).values
    assert (spread <= 0.2 + 1e-6).all()
    assert (spread > 0).float().mean() > 0.95  # members differ (unless a whole group is clipped to an end)
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert (t == 0.0).any() and (t == 1.0).any()  # clipping happened at both ends


def test_loss_of_exact_velocity_is_the_irreducible_loss(gaussian):
    """E||v - E[v|x_t]||^2 = Var(v) - Cov(v, x_t)^2 / Var(x_t), per dimension, at fixed t."""
    x0 = gaussian.sample(20_000, torch.Generator().manual_seed(2)).reshape(-1, 3, 1, 1)
    y = torch.zeros(x0.shape[0], dtype=torch.long)
    for t in (0.1, 0.5, 0.9):
        loss = training_losses(ExactVelocity(gaussian), x0, y, 1, TransportConfig(),
                               torch.Generator().manual_seed(3), t=torch.full((x0.shape[0],), t))
        expected = gaussian.irreducible_loss(t).mean().item()
        assert loss.shape == (x0.shape[0],)
        assert loss.mean().item() == pytest.approx(expected, rel=0.03)


def test_loss_over_sampled_timesteps_and_learn_sigma_channels(gaussian):
    """With t ~ U[0, 1] the mean loss is the integral of the irreducible loss; sigma channels are ignored."""
    x0 = gaussian.sample(40_000, torch.Generator().manual_seed(4)).reshape(-1, 3, 1, 1)
    y = torch.zeros(x0.shape[0], dtype=torch.long)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    curve = torch.stack([gaussian.irreducible_loss(float(s)).mean() for s in grid])
    expected = torch.trapezoid(curve, grid).item()
    losses = [
        training_losses(ExactVelocity(gaussian, learn_sigma=ls), x0, y, 4, TransportConfig(),
                        torch.Generator().manual_seed(5))
        for ls in (False, True)
    ]
    torch.testing.assert_close(losses[0], losses[1])
    assert losses[0].mean().item() == pytest.approx(expected, rel=0.03)


def test_groups_get_one_timestep_and_distinct_sample_ids(gaussian):
    model = ExactVelocity(gaussian)
    model.s_embedder = SiT(input_size=4, patch_size=2, in_channels=3, hidden_size=16, depth=1,
                           num_heads=2, num_classes=5, max_group_size=8).s_embedder
    x0 = gaussian.sample(24, torch.Generator().manual_seed(6)).reshape(-1, 3, 1, 1)
    y = torch.arange(6).repeat_interleave(4)
    a = training_losses(model, x0, y, 4, TransportConfig(), torch.Generator().manual_seed(7))
    b = training_losses(model, x0, y, 4, TransportConfig(), torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)  # seeded: timesteps, noise and sample ids all from the generator
    call = model.calls[0]
    assert call["group_size"] == 4 and torch.equal(call["y"], y)
    t = call["t"].reshape(6, 4)
    assert (t == t[:, :1]).all() and t[:, 0].unique().numel() == 6
    ids = call["sample_ids"].reshape(6, 4)
    assert all(row.unique().numel() == 4 for row in ids) and ids.max() < 8


def test_loss_with_real_model_matches_hand_computation():
    """A fresh SiT outputs zeros (adaLN-Zero), so its loss is mean((noise - x0)^2) over the C velocity channels."""
    torch.manual_seed(0)
    model = SiT(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2,
                num_classes=5, max_group_size=4, learn_sigma=True)
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(8, 2, 8, 8, generator=g)
    noise = torch.randn(8, 2, 8, 8, generator=g)
    t = torch.rand(8, generator=g)
    loss = training_losses(model, x0, torch.zeros(8, dtype=torch.long), 2, TransportConfig(), g, t=t, noise=noise)
    torch.testing.assert_close(loss, (noise - x0).pow(2).flatten(1).mean(1))
    loss.mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_bad_layout_is_an_error(gaussian):
    x0 = torch.zeros(6, 3, 1, 1)
    with pytest.raises(ValueError, match="6 images is not divisible by group_size=4"):
        training_losses(ExactVelocity(gaussian), x0, torch.zeros(6, dtype=torch.long), 4, TransportConfig())
    with pytest.raises(ValueError, match=r"t must have shape \(6,\)"):
        training_losses(ExactVelocity(gaussian), x0, torch.zeros(6, dtype=torch.long), 1, TransportConfig(),
                        t=torch.zeros(3))
