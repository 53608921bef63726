"""Group-benefit probe: does the model use its neighbours yet? (issue 4, item 9)

On a fixed set of groups, the *unconditional* loss is computed three ways with the same images,
timesteps, noise and sample ids, forward passes only:

* ``group``: the groups as planned, with group attention;
* ``single``: every image alone (N=1), i.e. the plain unconditional loss of the same batch;
* ``shuffled``: the same images regrouped so that every group holds members of N different planned
  groups (image ``m`` of group ``g`` moves to group ``(g + m) mod G`` at slot ``m``), keeping each image's own
  timestep and noise.

``gain_vs_single = 1 - group / single`` grows when the model profits from related neighbours;
``shuffled / group`` shows how much unrelated neighbours hurt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..grouping.plans import build_epoch_plan
from ..transport.losses import sample_timesteps, training_losses
from .data import as_source, step_generator

if TYPE_CHECKING:  # annotations only: the composed config imports this package's section
    from ..config import GroupDiffConfig

PROBE_STREAM = 1  # generator stream of the probe's fixed draws
PROBE_EPOCH = 2**31 - 1  # plan epoch reserved for the probe's groups (training epochs count up from 0)


@dataclass
class ProbeSet:
    """Fixed probe inputs: G groups of N images laid out (G*N, ...)."""

    x0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    sample_ids: torch.Tensor
    group_size: int


def build_probe_set(config: GroupDiffConfig, images, grouping: dict | None, model) -> ProbeSet:
    """The probe's groups (a GroupDiff-f plan of a reserved epoch index) and their fixed timesteps/noise;
    ``images`` is a tensor or a dataset (:func:`~groupdiff.train.data.as_source`)."""
    from ..data.datasets import fetch_items, item_shape

    source = as_source(images)
    t_cfg = config.train
    n = t_cfg.group_size
    groups = min(t_cfg.probe_groups, len(source) // n)
    if groups < 2:
        raise ValueError(f"the probe needs at least 2 groups of N={n}; the dataset holds {len(source)} images")
    plan = build_epoch_plan("groupdiff-f", len(source), groups * n, n, epoch=PROBE_EPOCH, seed=t_cfg.seed,
                            drop_last=True, **(grouping or {}))
    index = plan[0].indices
    gen = step_generator(t_cfg.seed, 0, stream=PROBE_STREAM)
    t = sample_timesteps(groups, n, config.transport, gen)
    noise = torch.randn((len(index), *item_shape(source)), generator=gen, dtype=torch.float32)
    ids = model.s_embedder.random_ids(groups, n, "cpu", gen)
    return ProbeSet(fetch_items(source, index), t, noise, ids, n)


def shuffle_permutation(groups: int, n: int) -> torch.Tensor:
    """Order that regroups images so that no two members of a planned group share a new group (needs G >= N)."""
    g = torch.arange(groups).repeat_interleave(n)
    m = torch.arange(n).repeat(groups)
    new_group = (g + m) % groups
    return torch.argsort(new_group * n + m)


@torch.no_grad()
def run_probe(forward, probe: ProbeSet, config: GroupDiffConfig, null_label: int, device: torch.device) -> dict[str, float]:
    """The three unconditional losses (means over the probe images) and their ratios.

    ``forward`` is the model call ``forward(x, t, y, group_size=..., sample_ids=...)``.
    """
    n = probe.group_size
    groups = probe.x0.shape[0] // n
    x0, t, noise, ids = (v.to(device) for v in (probe.x0, probe.t, probe.noise, probe.sample_ids))
    y = torch.full((x0.shape[0],), null_label, dtype=torch.long, device=device)
    cfg = config.transport
    group = training_losses(forward, x0, y, n, cfg, t=t, noise=noise, sample_ids=ids)
    single = training_losses(forward, x0, y, 1, cfg, t=t, noise=noise)
    out = {"probe/loss_group": float(group.mean()), "probe/loss_single": float(single.mean())}
    if groups >= n:
        perm = shuffle_permutation(groups, n).to(device)
        shuffled = training_losses(forward, x0[perm], y, n, cfg, t=t[perm], noise=noise[perm], sample_ids=ids)
        out["probe/loss_shuffled"] = float(shuffled.mean())
        out["probe/shuffled_over_group"] = out["probe/loss_shuffled"] / out["probe/loss_group"]
    out["probe/gain_vs_single"] = 1.0 - out["probe/loss_group"] / out["probe/loss_single"]
    return out
