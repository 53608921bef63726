"""Training timesteps and the per-image velocity loss (DESIGN 1.2, 1.4).

A batch holds ``B`` groups of ``N`` images laid out ``(B*N, C, H, W)`` (members of a group contiguous).
Every group draws one timestep ``t ~ U[train_t_min, train_t_max]``; with ``group_t_offset > 0`` each
member then moves uniformly within ``t +- offset`` (clipped back into the training range). The loss is
the mean squared error between the predicted and the true velocity ``v = eps - x0``, one value per image;
the caller averages it over all ``B*N`` images.
"""
from __future__ import annotations

import torch

from .config import TransportConfig
from .path import LinearPath


def _draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


def sample_timesteps(
    num_groups: int,
    group_size: int,
    config: TransportConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One training timestep per group, repeated for its ``group_size`` members: shape ``(B*N,)``.

    With ``config.group_t_offset > 0`` each member gets ``t_group + U(-offset, offset)`` clipped into
    ``[train_t_min, train_t_max]``. Draws come from ``generator`` (on its device), then move to ``device``.
    """
    if num_groups < 1 or group_size < 1:
        raise ValueError(f"num_groups and group_size must be >= 1, got {num_groups} and {group_size}")
    draw = _draw_device(generator, device)
    lo, hi = config.train_t_min, config.train_t_max
    t = lo + (hi - lo) * torch.rand(num_groups, generator=generator, device=draw, dtype=torch.float64)
    t = t.repeat_interleave(group_size)
    if config.group_t_offset > 0:
        offset = torch.rand(num_groups * group_size, generator=generator, device=draw, dtype=torch.float64)
        t = (t + (2 * offset - 1) * config.group_t_offset).clamp(lo, hi)
    return t.to(device=device, dtype=torch.float32)


def training_losses(
    model: torch.nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    group_size: int,
    config: TransportConfig,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image velocity MSE, shape ``(B*N,)``, for ``B`` groups of ``group_size`` images.

    x0: (B*N, C, H, W) clean images; y: (B*N,) labels (null label for unconditional groups).
    ``t``, ``noise`` and ``sample_ids`` are drawn from ``generator`` when not given (timesteps by
    :func:`sample_timesteps`; sample ids by ``model.s_embedder.random_ids`` when ``group_size > 1``).
    The model may output ``2C`` channels (``learn_sigma``): only the first ``C`` (velocity) enter the loss.
    """
    if x0.ndim < 2:
        raise ValueError(f"x0 must be (B*N, C, ...), got shape {tuple(x0.shape)}")
    total = x0.shape[0]
    if group_size < 1 or total % group_size:
        raise ValueError(
            f"batch of {total} images is not divisible by group_size={group_size}; "
            "lay out x0 as (B*N, C, H, W) with the N images of each group contiguous"
        )
    num_groups = total // group_size
    if t is None:
        t = sample_timesteps(num_groups, group_size, config, generator, device=x0.device)
    if t.shape != (total,):
        raise ValueError(f"t must have shape ({total},), got {tuple(t.shape)}")
    t = t.to(device=x0.device, dtype=x0.dtype)
    if noise is None:
        draw = _draw_device(generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=draw, dtype=x0.dtype).to(x0.device)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    if sample_ids is None and group_size > 1 and hasattr(model, "s_embedder"):
        sample_ids = model.s_embedder.random_ids(num_groups, group_size, x0.device, generator)

    x_t = LinearPath.interpolate(x0, noise, t)
    target = LinearPath.velocity(x0, noise)
    out = model(x_t, t, y, group_size=group_size, sample_ids=sample_ids)
    channels = x0.shape[1]
    if out.shape[0] != total or out.shape[1] not in (channels, 2 * channels):
        raise ValueError(
            f"model output shape {tuple(out.shape)} does not match x0 {tuple(x0.shape)}: "
            f"expected {channels} (velocity) or {2 * channels} (learn_sigma) channels"
        )
    pred = out[:, :channels]
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
