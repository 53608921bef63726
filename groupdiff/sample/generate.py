"""Sample a batch of groups from a model: seeded noise -> guided velocity -> integrator (DESIGN 1.4).

One ``torch.Generator`` seeded with ``SamplerConfig.seed`` (on the target device) supplies, in this
order, the initial noise, the per-trajectory sample ids (N > 1) and the SDE noise, so the same seed,
batch and device give bit-identical samples.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..config import GuidanceConfig
from ..transport.config import SamplerConfig
from ..transport.integrators import integrate
from .guidance import make_velocity_fn


def check_group_labels(labels: torch.Tensor, group_size: int, num_classes: int | None = None) -> None:
    """Raise a ValueError unless ``labels`` (B*N,) forms whole groups whose members share one label."""
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor (B*N,), got shape {tuple(labels.shape)}")
    if labels.shape[0] % group_size:
        raise ValueError(
            f"{labels.shape[0]} labels are not divisible by group_size={group_size}; "
            "pass B groups of N contiguous labels"
        )
    groups = labels.reshape(-1, group_size)
    mixed = (groups != groups[:, :1]).any(dim=1).nonzero().flatten()
    if mixed.numel():
        g = int(mixed[0])
        raise ValueError(
            f"group {g} (labels[{g * group_size}:{(g + 1) * group_size}]) mixes labels "
            f"{groups[g].tolist()}; the members of one group must share one label"
        )
    if num_classes is not None and ((labels < 0) | (labels > num_classes)).any():
        bad = labels[(labels < 0) | (labels > num_classes)][0].item()
        raise ValueError(f"label {bad} out of range [0, {num_classes}] ({num_classes} = null label)")


def class_balanced_labels(num_samples: int, num_classes: int, group_size: int) -> torch.Tensor:
    """``num_samples`` labels, equal count per class, in groups of ``group_size`` sharing one class.

    Group ``g`` gets class ``g % num_classes``, so any prefix of whole rounds is balanced too.
    ``num_samples`` must be a multiple of ``num_classes * group_size``.
    """
    if num_samples < 1 or num_classes < 1 or group_size < 1:
        raise ValueError(
            f"num_samples={num_samples}, num_classes={num_classes}, group_size={group_size} must all be >= 1"
        )
    if num_samples % (num_classes * group_size):
        raise ValueError(
            f"num_samples={num_samples} is not a multiple of num_classes={num_classes} x group_size={group_size}"
            f" = {num_classes * group_size}; class-balanced groups need equal whole groups per class"
        )
    num_groups = num_samples // group_size
    return (torch.arange(num_groups) % num_classes).repeat_interleave(group_size)


def generate(
    model: torch.nn.Module,
    labels: torch.Tensor | Sequence[int],
    sampler: SamplerConfig,
    guidance: GuidanceConfig,
    image_shape: Sequence[int],
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Samples ``(B*N, C, H, W)`` (float32, on ``device``) for labels ``(B*N,)`` in groups of ``guidance.group_size``.

    The model must already be on ``device``; it is put in eval mode for the call (its previous mode is
    restored afterwards) and runs under ``torch.no_grad()``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    check_group_labels(labels, guidance.group_size, getattr(model, "num_classes", None))
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[0] != model.in_channels:
        raise ValueError(f"image_shape must be (C, H, W) with C = model.in_channels={model.in_channels}, got {shape}")
    device = torch.device(device)
    total, n = labels.shape[0], guidance.group_size
    generator = torch.Generator(device=device).manual_seed(sampler.seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            noise = torch.randn((total, *shape), generator=generator, device=device)
            ids = model.s_embedder.random_ids(total // n, n, device, generator) if n > 1 else None
            fn = make_velocity_fn(model, labels.to(device), guidance, sample_ids=ids)
            return integrate(fn, noise, sampler, generator, progress)
    finally:
        model.train(was_training)
