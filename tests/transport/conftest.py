"""Closed forms for data from a known Gaussian x0 ~ N(mu, diag(sigma^2)) under x_t = (1-t) x0 + t eps.

x_t is Gaussian with mean (1-t) mu and variance (1-t)^2 sigma^2 + t^2; v = eps - x0 has mean -mu and
Cov(v, x_t) = t - (1-t) sigma^2, so the exact velocity (jointly Gaussian) is
E[v | x_t] = -mu + Cov / Var * (x_t - (1-t) mu), and the ODE flow map from t=1 is
x_t = (1-t) mu + sd(t) * x_1 (sd(1) = 1), i.e. x_0 = mu + sigma * x_1.
"""
from __future__ import annotations

import pytest
import torch


class Gaussian:
    """Per-dimension Gaussian data; tensors of shape (M, D) or (M, D, 1, 1) broadcast against mu/sigma."""

    def __init__(self, mu: list[float], sigma: list[float]):
        self.mu = torch.tensor(mu, dtype=torch.float64)
        self.sigma = torch.tensor(sigma, dtype=torch.float64)

    def _b(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.to(x.device).reshape(1, -1, *([1] * (x.ndim - 2)))

    def _t(self, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t

    def mean_t(self, t, x):
        return (1 - self._t(t, x)) * self._b(self.mu, x)

    def var_t(self, t, x):
        tt, s = self._t(t, x), self._b(self.sigma, x)
        return (1 - tt) ** 2 * s**2 + tt**2

    def cov_vx(self, t, x):
        tt, s = self._t(t, x), self._b(self.sigma, x)
        return tt - (1 - tt) * s**2

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact E[v | x_t = x]."""
        xd = x.to(torch.float64)
        v = -self._b(self.mu, xd) + self.cov_vx(t, xd) / self.var_t(t, xd) * (xd - self.mean_t(t, xd))
        return v.to(x.dtype)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """Exact grad log p_t(x)."""
        return -(x - self.mean_t(t, x)) / self.var_t(t, x)

    def irreducible_loss(self, t: float) -> torch.Tensor:
        """Per-dimension E||v - E[v|x_t]||^2 = Var(v) - Cov(v, x_t)^2 / Var(x_t)."""
        s2 = self.sigma**2
        var = (1 - t) ** 2 * s2 + t**2
        cov = t - (1 - t) * s2
        return 1 + s2 - cov**2 / var

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.mu.numel(), generator=generator, dtype=torch.float64)
        return self.mu + self.sigma * z


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """These tests are many small ops: one torch thread avoids oversubscribing a shared CPU."""


@pytest.fixture
def gaussian() -> Gaussian:
    return Gaussian(mu=[1.0, -0.5, 0.0], sigma=[0.5, 1.5, 0.2])
