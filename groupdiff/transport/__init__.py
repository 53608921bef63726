"""Transport maths (DESIGN 1.4): linear interpolant (t = 1 noise), velocity loss, ODE/SDE samplers."""
from __future__ import annotations

from .integrators import (
    VelocityFn,
    integrate,
    nfe,
    ode_euler,
    ode_heun,
    ode_time_grid,
    sde_euler_maruyama,
    sde_time_grid,
)
from .losses import sample_timesteps, training_losses
from .path import LinearPath, expand_t_like

__all__ = [
    "LinearPath", "expand_t_like",
    "sample_timesteps", "training_losses",
    "VelocityFn", "integrate", "nfe", "ode_euler", "ode_heun", "sde_euler_maruyama",
    "ode_time_grid", "sde_time_grid",
]
