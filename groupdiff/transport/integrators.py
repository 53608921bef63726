"""Fixed-step samplers from noise (t = 1) to data (t = 0) for a velocity field (DESIGN 1.4).

A :data:`VelocityFn` maps ``(x (M, ...), t (M,))`` to the velocity ``v = eps - x0`` at ``x``; guidance
and grouping live inside it (``groupdiff.sample.guidance``), so the integrators only see maths.

* ``ode-euler``: uniform grid ``linspace(1, ode_t_end, K + 1)``, ``x <- x + (t_next - t) v``. NFE = K.
* ``ode-heun``: same grid, second-order trapezoid corrector on every step **except the last**, which is
  a plain Euler step (the EDM / released REPA-GroupDiff convention, so a model is never asked for a
  correction at the end point). NFE = 2K - 1.
* ``sde-euler``: Euler-Maruyama on the reverse SDE ``dx = [v - g^2/2 * score] dt + g dW`` with
  ``g^2 = 2t``, as in the released REPA/GroupDiff sampler: grid ``linspace(1, sde_last_step, K)`` then
  ``0``; the K - 1 steps down to ``sde_last_step`` add noise, the last step (``sde_last_step -> 0``)
  takes the mean (no noise). NFE = K.

Time grids are float64 and the state is integrated in float64 (as the released samplers do); the
result is returned in the dtype of the initial noise. SDE noise comes from the given generator only, so
a fixed seed gives identical samples. Written by hand: these few lines are exactly the released samplers
(which are not packaged); torchdiffeq/diffusers schedulers use other grids, conventions and NFE counts.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from .config import SamplerConfig
from .path import LinearPath

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(x, t) -> v``: x of shape (M, ...), t of shape (M,) (one time for every sample)."""


def ode_time_grid(num_steps: int, t_end: float = 0.0) -> torch.Tensor:
    """``num_steps + 1`` float64 times from 1 down to ``t_end`` (uniform)."""
    _check_steps(num_steps)
    if not 0.0 <= t_end < 1.0:
        raise ValueError(f"ode t_end={t_end} must lie in [0, 1)")
    return torch.linspace(1.0, t_end, num_steps + 1, dtype=torch.float64)


def sde_time_grid(num_steps: int, last_step: float = 0.04) -> torch.Tensor:
    """``linspace(1, last_step, num_steps)`` followed by 0: ``num_steps + 1`` float64 times."""
    _check_steps(num_steps)
    if not 0.0 < last_step < 1.0:
        raise ValueError(f"sde last_step={last_step} must lie in (0, 1): the score is undefined at t=0")
    grid = torch.linspace(1.0, last_step, num_steps, dtype=torch.float64)
    return torch.cat([grid, torch.zeros(1, dtype=torch.float64)])


def nfe(config: SamplerConfig) -> int:
    """Exact number of velocity-function calls the sampler ``config`` makes.

    ode-euler: K; ode-heun: 2K - 1 (no corrector on the final step); sde-euler: K (K - 1 noisy steps
    plus the final mean step). Guidance may run one or two model forwards per call (see
    ``groupdiff.sample.guidance``); this counts calls of the :data:`VelocityFn`.
    """
    k = config.num_steps
    if config.method == "ode-euler":
        return k
    if config.method == "ode-heun":
        return 2 * k - 1
    if config.method == "sde-euler":
        return k
    raise ValueError(f"unknown sampler method {config.method!r}; expected ode-euler, ode-heun or sde-euler")


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")


def _velocity(fn: VelocityFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Call ``fn`` at time ``t`` (0-d float64) for every sample; return a float64 velocity."""
    v = fn(x, t.to(x.device).expand(x.shape[0]))
    if v.shape != x.shape:
        raise ValueError(f"velocity function returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
    return v.to(torch.float64)


def _steps(grid: torch.Tensor, progress: bool, desc: str):
    pairs = list(zip(grid[:-1], grid[1:]))
    return tqdm(pairs, desc=desc, leave=False) if progress else pairs


def ode_euler(fn: VelocityFn, noise: torch.Tensor, num_steps: int, t_end: float = 0.0,
              progress: bool = False) -> torch.Tensor:
    """Explicit Euler from t = 1 to ``t_end`` in ``num_steps`` uniform steps (NFE = num_steps)."""
    x = noise.to(torch.float64)
    for t_cur, t_next in _steps(ode_time_grid(num_steps, t_end), progress, "ode-euler"):
        x = x + (t_next - t_cur) * _velocity(fn, x, t_cur)
    return x.to(noise.dtype)


def ode_heun(fn: VelocityFn, noise: torch.Tensor, num_steps: int, t_end: float = 0.0,
             progress: bool = False) -> torch.Tensor:
    """Heun (trapezoid predictor-corrector) from t = 1 to ``t_end``; last step Euler (NFE = 2K - 1)."""
    x = noise.to(torch.float64)
    steps = _steps(ode_time_grid(num_steps, t_end), progress, "ode-heun")
    for i, (t_cur, t_next) in enumerate(steps):
        dt = t_next - t_cur
        d_cur = _velocity(fn, x, t_cur)
        x_euler = x + dt * d_cur
        if i < num_steps - 1:
            d_next = _velocity(fn, x_euler, t_next)
            x = x + dt * 0.5 * (d_cur + d_next)
        else:
            x = x_euler
    return x.to(noise.dtype)


def _sde_drift(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Reverse-SDE drift ``v - g^2/2 * score`` with ``g^2 = 2t``."""
    return v - t * LinearPath.score_from_velocity(v, x, t)


def sde_euler_maruyama(fn: VelocityFn, noise: torch.Tensor, num_steps: int, last_step: float = 0.04,
                       generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Euler-Maruyama with ``g^2 = 2t``; final step ``last_step -> 0`` takes the mean (NFE = num_steps).

    Per step ``x <- x + drift * dt + sqrt(2t) * sqrt(|dt|) * z`` with ``z ~ N(0, I)`` from ``generator``.
    """
    grid = sde_time_grid(num_steps, last_step)
    x = noise.to(torch.float64)
    draw = generator.device if generator is not None else x.device
    for i, (t_cur, t_next) in enumerate(_steps(grid, progress, "sde-euler")):
        dt = t_next - t_cur
        drift = _sde_drift(_velocity(fn, x, t_cur), x, t_cur.to(x.device))
        x_mean = x + drift * dt
        if i == num_steps - 1:  # last step: the mean, no noise
            x = x_mean
        else:
            z = torch.randn(x.shape, generator=generator, device=draw, dtype=torch.float64).to(x.device)
            x = x_mean + torch.sqrt(2 * t_cur) * torch.sqrt(dt.abs()) * z
    return x.to(noise.dtype)


def integrate(fn: VelocityFn, noise: torch.Tensor, config: SamplerConfig,
              generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Run the sampler ``config.method`` from ``noise`` (the t = 1 sample); makes exactly ``nfe(config)`` calls."""
    if config.method == "ode-euler":
        return ode_euler(fn, noise, config.num_steps, config.ode_t_end, progress)
    if config.method == "ode-heun":
        return ode_heun(fn, noise, config.num_steps, config.ode_t_end, progress)
    if config.method == "sde-euler":
        return sde_euler_maruyama(fn, noise, config.num_steps, config.sde_last_step, generator, progress)
    raise ValueError(f"unknown sampler method {config.method!r}; expected ode-euler, ode-heun or sde-euler")
