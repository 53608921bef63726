"""Samplers against closed forms: Gaussian data, whose exact velocity field and flow map are known."""
from __future__ import annotations

import math

import pytest
import torch

from groupdiff.config import SamplerConfig
from groupdiff.transport import (
    integrate,
    nfe,
    ode_euler,
    ode_heun,
    ode_time_grid,
    sde_euler_maruyama,
    sde_time_grid,
)

NUM = 20_000  # scalars per dimension


def _noise(seed: int = 0, dims: int = 3) -> torch.Tensor:
    return torch.randn(NUM, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_moments(out: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, var_tol: float) -> None:
    """Mean within 4 standard errors (+ small bias), variance ratio within var_tol."""
    sd = var.sqrt()
    mean_err = (out.mean(0) - mu).abs()
    assert (mean_err < 4 * sd / math.sqrt(NUM) + 5e-3).all(), (out.mean(0), mu)
    ratio = out.var(0) / var
    assert ((ratio - 1).abs() < var_tol).all(), ratio


@pytest.mark.parametrize("method,steps", [("ode-euler", 250), ("ode-heun", 25)])
def test_ode_reproduces_gaussian_moments(gaussian, method, steps):
    out = integrate(gaussian.velocity, _noise(), SamplerConfig(method=method, num_steps=steps))
    _assert_moments(out, gaussian.mu, gaussian.sigma**2, var_tol=0.04)


def test_ode_follows_exact_flow_map_and_heun_converges_faster(gaussian):
    x1 = _noise(1)
    exact = gaussian.mu + gaussian.sigma * x1  # the ODE maps x_1 to mu + sigma * x_1
    err = {}
    for k in (10, 20, 40):
        err["euler", k] = (ode_euler(gaussian.velocity, x1, k) - exact).abs().max().item()
        err["heun", k] = (ode_heun(gaussian.velocity, x1, k) - exact).abs().max().item()
    for k in (10, 20, 40):
        assert err["heun", k] < err["euler", k] / 4
    # at about equal cost (Heun K=10 makes 19 calls, Euler K=20 makes 20) Heun still wins
    assert err["heun", 10] < err["euler", 20]
    # observed orders: Euler first order (error halves), Heun second order (error quarters)
    for k in (10, 20):
        assert 1.7 < err["euler", k] / err["euler", 2 * k] < 2.3
        assert 3.3 < err["heun", k] / err["heun", 2 * k] < 4.7
    assert err["heun", 40] < 1e-2


def test_ode_stops_at_t_end_on_the_exact_marginal(gaussian):
    x1 = _noise(2)
    t_end = 0.3
    out = ode_heun(gaussian.velocity, x1, 40, t_end=t_end)
    exact = (1 - t_end) * gaussian.mu + ((1 - t_end) ** 2 * gaussian.sigma**2 + t_end**2).sqrt() * x1
    assert (out - exact).abs().max().item() < 2e-3


def test_sde_reproduces_gaussian_moments(gaussian):
    out = sde_euler_maruyama(gaussian.velocity, _noise(3), num_steps=200, last_step=0.01,
                             generator=torch.Generator().manual_seed(4))
    _assert_moments(out, gaussian.mu, gaussian.sigma**2, var_tol=0.05)


def test_sde_last_mean_step_matches_its_closed_form(gaussian):
    """With the released last_step=0.04 the final mean step is a known affine map of x_{0.04}:
    x_0 = x + dt (x + (2 - t) v) with dt = -t and v affine in x, so Var(x_0) = A^2 Var(x_t)."""
    t = 0.04
    out = sde_euler_maruyama(gaussian.velocity, _noise(5), num_steps=250, last_step=t,
                             generator=torch.Generator().manual_seed(6))
    s2 = gaussian.sigma**2
    var_t = (1 - t) ** 2 * s2 + t**2
    k = (t - (1 - t) * s2) / var_t
    a = 1 - t - t * (2 - t) * k
    predicted_var = a**2 * var_t
    assert (predicted_var < 0.92 * s2)[2]  # the small-variance dimension loses visibly (~12%)
    _assert_moments(out, gaussian.mu, predicted_var, var_tol=0.04)


def test_sde_is_seeded_and_last_step_adds_no_noise(gaussian):
    x1 = _noise(7)
    run = lambda seed, k: sde_euler_maruyama(gaussian.velocity, x1, k, 0.04, torch.Generator().manual_seed(seed))
    assert torch.equal(run(0, 10), run(0, 10))
    assert not torch.allclose(run(0, 10), run(1, 10))
    # one step = only the mean step from t=1 to 0: x - (v + x) = -v = mu - x, whatever the generator
    assert torch.equal(run(0, 1), run(1, 1))
    torch.testing.assert_close(run(0, 1), gaussian.mu - x1)


@pytest.mark.parametrize("method", ["ode-euler", "ode-heun", "sde-euler"])
@pytest.mark.parametrize("steps", [1, 2, 5, 13])
def test_nfe_is_exact(gaussian, method, steps):
    calls = []

    def counted(x, t):
        calls.append(t.clone())
        assert t.shape == (x.shape[0],) and t.dtype == torch.float64
        return gaussian.velocity(x, t)

    config = SamplerConfig(method=method, num_steps=steps)
    integrate(counted, _noise(8)[:16], config, torch.Generator().manual_seed(0))
    assert len(calls) == nfe(config)
    assert calls[0][0].item() == 1.0  # every sampler starts at pure noise
    assert all(float(c.min()) == float(c.max()) for c in calls)  # one time per call


def test_time_grids():
    g = sde_time_grid(250, 0.04)
    assert g.dtype == torch.float64 and g.shape == (251,)
    assert g[0] == 1.0 and g[-2].item() == pytest.approx(0.04) and g[-1] == 0.0
    assert (g[1:] < g[:-1]).all()
    o = ode_time_grid(8, 0.2)
    torch.testing.assert_close(o[:-1] - o[1:], torch.full((8,), 0.1, dtype=torch.float64))


def test_bad_sampler_inputs():
    with pytest.raises(ValueError, match="num_steps"):
        ode_euler(lambda x, t: x, torch.zeros(2, 1), 0)
    with pytest.raises(ValueError, match="last_step=0.0"):
        sde_time_grid(10, 0.0)
    with pytest.raises(ValueError, match=r"returned shape \(2,\)"):
        ode_euler(lambda x, t: t, torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="sde_last_step"):
        SamplerConfig(sde_last_step=0.0)
