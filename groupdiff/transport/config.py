"""The ``transport`` (training interpolant) and ``sampler`` (integrator) config sections, owned by the
transport package (composed in :mod:`groupdiff.config`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config_base import Section


class TransportConfig(Section):
    """Linear interpolant with velocity prediction; how training timesteps are drawn (DESIGN 1.2, 1.4)."""

    path: Literal["linear"] = Field("linear", description="Interpolant x_t = (1-t) x_0 + t noise (t=1 noise).")
    prediction: Literal["velocity"] = Field("velocity", description="Model target: v = noise - x_0.")
    train_t_min: float = Field(0.0, ge=0.0, lt=1.0, description="Smallest training timestep.")
    train_t_max: float = Field(1.0, gt=0.0, le=1.0, description="Largest training timestep.")
    group_t_offset: float = Field(
        0.0, ge=0.0, le=0.5,
        description="Intra-group timestep offset: members draw uniformly from t +- offset (clipped). 0 = one t per group.",
    )

    @model_validator(mode="after")
    def _check_range(self) -> "TransportConfig":
        if self.train_t_min >= self.train_t_max:
            raise ValueError(
                f"transport.train_t_min={self.train_t_min} must be below transport.train_t_max={self.train_t_max}"
            )
        return self


class SamplerConfig(Section):
    """Numerical integrator from noise (t=1) to data (t=0)."""

    method: Literal["ode-euler", "ode-heun", "sde-euler"] = Field(
        "sde-euler", description="ODE Euler, ODE Heun (2nd order) or SDE Euler-Maruyama."
    )
    num_steps: int = Field(250, ge=1, le=10_000, description="Integration steps (SDE: including the final mean step).")
    sde_last_step: float = Field(
        0.04, gt=0.0, lt=1.0,
        description="SDE: the last step jumps from t=sde_last_step to 0 taking the mean (no noise); "
        "> 0 because the score is undefined at t=0.",
    )
    ode_t_end: float = Field(0.0, ge=0.0, lt=1.0, description="ODE: integrate from t=1 down to this time.")
    seed: int = Field(0, ge=0, description="Seed for the initial noise, SDE noise and sample ids.")
