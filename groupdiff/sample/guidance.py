"""Classifier-free guidance and GroupDiff inference as a velocity function (DESIGN 1.4).

:func:`make_velocity_fn` turns a SiT, the real labels of a batch of ``B`` groups of ``N`` images
(layout ``(B*N, ...)``, members of a group contiguous) and a :class:`GuidanceConfig` into a
``VelocityFn`` for ``groupdiff.transport.integrate``:

* CFG in the code convention ``v = v_u + s (v_c - v_u)`` (the paper's scale is ``s - 1``); ``s == 1``
  runs the conditional branch only.
* Guidance applies for ``t`` in ``[interval_low, interval_high]`` (closed, t = 1 noise, as the released
  sampler); outside it only the conditional branch is evaluated (no unconditional forward at all).
* ``guide_first_channels = K > 0`` (legacy DiT/SiT): only the first K channels are guided, the others
  take the conditional prediction.
* ``baseline``: N = 1, one forward over the conditional and unconditional halves concatenated.
* ``groupdiff-f``: both branches joint over the group of N, batched as 2B groups in one forward.
* ``groupdiff-l``: conditional branch per image (group size 1, no sample ids), unconditional branch
  with null labels joint over the group of N (two forwards: the group sizes differ).

Sample ids (which member of its group an image is, DESIGN 1.2) are drawn **once per trajectory** -- the
first N entries of a random permutation of ``[0, max_group_size)`` per group, by
``model.s_embedder.random_ids`` -- and reused at every step and by both branches. Redrawing them per step
would change the conditioning ``c`` of the same image between steps, which a trajectory of an ODE
should not see; reusing them keeps the velocity field a fixed function of (x, t).

Only the velocity channels (the first ``model.in_channels`` of the output) are used; with
``learn_sigma`` the rest are ignored. The model should be in eval mode (``generate`` does that), or
label dropout would act at sampling time.
"""
from __future__ import annotations

import torch

from ..config import GuidanceConfig
from ..transport.integrators import VelocityFn


def _check_labels(model: torch.nn.Module, y: torch.Tensor, guidance: GuidanceConfig) -> None:
    n = guidance.group_size
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D tensor (B*N,), got shape {tuple(y.shape)}")
    if y.shape[0] == 0 or y.shape[0] % n:
        raise ValueError(
            f"{y.shape[0]} labels are not a positive multiple of guidance.group_size={n}; "
            "lay the batch out as B groups of N contiguous images"
        )
    if n > model.max_group_size:
        raise ValueError(f"guidance.group_size={n} exceeds the model's max_group_size={model.max_group_size}")
    if guidance.guide_first_channels > model.in_channels:
        raise ValueError(
            f"guidance.guide_first_channels={guidance.guide_first_channels} exceeds the model's "
            f"in_channels={model.in_channels}"
        )


def make_velocity_fn(
    model: torch.nn.Module,
    y: torch.Tensor,
    guidance: GuidanceConfig,
    sample_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> VelocityFn:
    """A guided ``VelocityFn`` over ``(B*N, C, H, W)`` for real labels ``y`` (B*N,).

    ``sample_ids`` (B*N,) are used for every joint (N > 1) forward; when omitted and N > 1 they are
    drawn once here from ``generator``. The returned function takes ``x`` (B*N, C, H, W) and ``t``
    (B*N,) with one time for the whole batch, and returns the velocity in ``x``'s dtype.
    """
    _check_labels(model, y, guidance)
    total, n = y.shape[0], guidance.group_size
    if n > 1:
        if sample_ids is None:
            sample_ids = model.s_embedder.random_ids(total // n, n, y.device, generator)
        if sample_ids.shape != (total,):
            raise ValueError(f"sample_ids must have shape ({total},), got {tuple(sample_ids.shape)}")
        sample_ids = sample_ids.to(y.device)
    else:
        sample_ids = None
    null = torch.full_like(y, model.null_label)
    channels = model.in_channels
    dtype = next(model.parameters()).dtype
    cond_group = 1 if guidance.mode in ("baseline", "groupdiff-l") else n
    scale, first_k = guidance.cfg_scale, guidance.guide_first_channels

    def forward(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, group_size: int,
                ids: torch.Tensor | None) -> torch.Tensor:
        out = model(x.to(dtype), t.to(dtype), labels, group_size=group_size,
                    sample_ids=ids if group_size > 1 else None)
        return out[:, :channels]

    def guided_now(t: torch.Tensor) -> bool:
        if scale == 1.0:
            return False
        t_lo, t_hi = t.min().item(), t.max().item()
        if t_lo != t_hi:
            raise ValueError(f"guidance needs one time for the whole batch, got t in [{t_lo}, {t_hi}]")
        return guidance.interval_low <= t_lo <= guidance.interval_high

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != total or t.shape != (total,):
            raise ValueError(
                f"expected x with {total} images and t of shape ({total},), got x {tuple(x.shape)}, t {tuple(t.shape)}"
            )
        if not guided_now(t):
            return forward(x, t, y, cond_group, sample_ids).to(x.dtype)
        if guidance.mode == "groupdiff-l":
            v_c = forward(x, t, y, 1, None)
            v_u = forward(x, t, null, n, sample_ids)
        else:
            ids = None if sample_ids is None else torch.cat([sample_ids, sample_ids])
            both = forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), cond_group, ids)
            v_c, v_u = both.chunk(2)
        v = v_u + scale * (v_c - v_u)
        if first_k:
            v = torch.cat([v[:, :first_k], v_c[:, first_k:]], dim=1)
        return v.to(x.dtype)

    return velocity
