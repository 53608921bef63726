"""The linear interpolant between data and noise, and conversions between what a velocity implies.

Time convention (whole project, the released GroupDiff / REPA one): **t = 1 is pure noise, t = 0 is data**::

    x_t = (1 - t) * x_0 + t * eps,        eps ~ N(0, I)
    v   = d x_t / d t = eps - x_0          (the model's target)

So ``alpha_t = 1 - t`` (data coefficient) and ``sigma_t = t`` (noise coefficient). Given ``x_t`` and a
velocity ``v`` (exact or predicted) the two unknowns ``x_0`` and ``eps`` follow from the two linear
equations above::

    x_0 = x_t - t * v
    eps = x_t + (1 - t) * v
    score = grad log p_t(x_t) = -E[eps | x_t] / t = -(x_t + (1 - t) * v) / t

Official SiT checkpoints (willisma/SiT) use the opposite convention: ``x_t = t_sit * x_1 + (1 - t_sit) *
noise`` with ``t_sit = 0`` pure noise and predict ``v_sit = x_1 - noise``. Hence ``t_sit = 1 - t`` and
``v_sit = -v``. The model does this conversion itself when ``ModelConfig.time_convention='noise_at_0'``
(``groupdiff/models/sit.py``), so everything in this package only ever sees our convention.

Written by hand (a dozen lines of algebra): no library exposes this interpolant under our convention.
"""
from __future__ import annotations

import torch


def expand_t_like(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast ``t`` (a number, a 0-d tensor or shape ``(M,)``) against ``x`` of shape ``(M, ...)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class LinearPath:
    """``x_t = (1 - t) x_0 + t eps`` with velocity target ``v = eps - x_0`` (t = 1 noise)."""

    @staticmethod
    def alpha(t: torch.Tensor) -> torch.Tensor:
        """Data coefficient ``1 - t``."""
        return 1 - t

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        """Noise coefficient ``t``."""
        return t

    @staticmethod
    def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The noisy sample ``x_t = (1 - t) x0 + t eps``; ``t`` is a scalar or one value per sample."""
        tt = expand_t_like(t, x0)
        return (1 - tt) * x0 + tt * eps

    @staticmethod
    def velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The training target ``v = d x_t / dt = eps - x0`` (independent of t for this path)."""
        return eps - x0

    @staticmethod
    def x0_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Data estimate ``x0 = x_t - t v``."""
        return x - expand_t_like(t, x) * v

    @staticmethod
    def eps_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Noise estimate ``eps = x_t + (1 - t) v``."""
        return x + (1 - expand_t_like(t, x)) * v

    @staticmethod
    def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Score ``grad log p_t(x) = -(x + (1 - t) v) / t``; undefined at t = 0 (callers keep t > 0).

        Same formula as the released REPA/GroupDiff ``get_score_from_velocity`` for the linear path
        (``var = t``, ``reverse_alpha_ratio = -(1 - t)``).
        """
        tt = expand_t_like(t, x)
        return -(x + (1 - tt) * v) / tt
