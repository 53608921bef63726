"""Cross-sample attention score S_cross (DESIGN 1.6), recorded with hooks while sampling.

Definition. In a group attention layer, for a query image ``i`` of a group of ``N`` and a member
``j != i``, ``P_ij`` is the attention probability mass that the query tokens (patches) of image ``i`` put
on the key tokens of image ``j``, averaged over the query tokens of ``i`` (each query's probabilities sum
to 1 over all ``N*L`` keys, so ``sum_j P_ij <= 1`` with the rest on ``i`` itself). Then

    S_i = (P_max - P_mean) / P_max,   P_max = max_{j != i} P_ij,   P_mean = mean_{j != i} P_ij.

S is 0 when an image spreads its cross-sample attention evenly (always the case for N = 2) and tends
to ``1 - 1/(N-1)`` when it concentrates on one member.

Aggregation (what :class:`CrossAttentionRecorder` reports per image):
1. ``P`` is averaged over the attention heads of a layer (attention mass, so averaging is meaningful);
2. ``S_i`` is computed per (layer, network evaluation, branch) from that head-averaged ``P``;
3. the reported ``S_i`` is the mean over the chosen layers (default all), over the network
   evaluations whose time ``t`` lies in the chosen window ``[t_low, t_high]`` (t = 1 noise), and over the
   group-attention branches run at that time (GroupDiff-f: conditional and unconditional;
   GroupDiff-l: the unconditional one; calls with group size 1 carry no cross-sample attention and are
   skipped). Images that saw no recorded call get NaN. The image-set score is the mean over images.

The probabilities are recomputed explicitly as ``softmax(q k^T / sqrt(d))`` from the hooked layer's
input (analysis only; the model's fused attention path is untouched and its output is not modified).
The score matrix is built one query image at a time, so memory is ``G * heads * L * N*L`` per step.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def cross_sample_score(mass: torch.Tensor) -> torch.Tensor:
    """S per query image from ``mass`` (..., N, N): ``mass[..., i, j]`` = attention of image i on member j.

    Returns (..., N). The diagonal (attention on itself) is ignored. Needs N >= 2.
    """
    n = mass.shape[-1]
    if mass.shape[-2] != n or n < 2:
        raise ValueError(f"mass must be (..., N, N) with N >= 2, got shape {tuple(mass.shape)}")
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=mass.device)
    others = mass[..., off_diagonal].reshape(*mass.shape[:-2], n, n - 1)
    p_max = others.amax(dim=-1)
    p_mean = others.mean(dim=-1)
    score = (p_max - p_mean) / p_max
    return torch.where(p_max > 0, score, torch.zeros_like(score))


@torch.no_grad()
def attention_mass(attn: nn.Module, x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Head-averaged mass ``P`` (G, N, N) of a group-attention layer on its input ``x`` (G*N, L, D).

    ``attn`` is a :class:`groupdiff.models.layers.GroupAttention` (uses its ``qkv_heads``).
    """
    bn, length, dim = x.shape
    if bn % group_size:
        raise ValueError(f"batch of {bn} is not divisible by group_size={group_size}")
    grouped = x.reshape(bn // group_size, group_size * length, dim)
    q, k, _ = attn.qkv_heads(grouped)  # (G, heads, N*L, d)
    q, k = q.float(), k.float()
    scale = q.shape[-1] ** -0.5
    rows = []
    for i in range(group_size):
        q_i = q[:, :, i * length : (i + 1) * length]  # queries of image i
        probs = torch.softmax(q_i @ k.transpose(-1, -2) * scale, dim=-1)  # (G, h, L, N*L)
        per_member = probs.reshape(*probs.shape[:-1], group_size, length).sum(-1)  # (G, h, L, N)
        rows.append(per_member.mean(dim=2).mean(dim=1))  # over query tokens, then heads -> (G, N)
    return torch.stack(rows, dim=1)  # (G, N query, N key)


class CrossAttentionRecorder:
    """Context manager: hooks a SiT's group-attention layers and accumulates S_cross per image.

    ``num_groups`` is the number of groups ``B`` of the batch being sampled. A network call over
    ``k * B`` groups (e.g. GroupDiff-f's conditional and unconditional branches stacked along the batch)
    attributes group ``g`` to sampled group ``g % B``. ``layers`` are block indices (None = all blocks);
    calls with ``t`` outside ``[t_low, t_high]`` are ignored.
    """

    def __init__(
        self, model: nn.Module, num_groups: int, group_size: int, layers: Sequence[int] | None = None,
        t_low: float = 0.0, t_high: float = 1.0,
    ):
        depth = len(model.blocks)
        chosen = list(range(depth)) if not layers else [int(i) for i in layers]
        bad = [i for i in chosen if not -depth <= i < depth]
        if bad:
            raise ValueError(f"attention-score layers {bad} out of range for a model with {depth} blocks")
        if t_low > t_high:
            raise ValueError(f"attention-score window t_low={t_low} is above t_high={t_high}")
        self.model, self.layers = model, sorted({i % depth for i in chosen})
        self.num_groups, self.group_size = num_groups, group_size
        self.t_low, self.t_high = t_low, t_high
        self.total = torch.zeros(num_groups * group_size, dtype=torch.float64)
        self.count = torch.zeros(num_groups * group_size, dtype=torch.float64)
        self.calls = 0
        self._t: float | None = None
        self._handles: list = []

    def __enter__(self) -> "CrossAttentionRecorder":
        self._handles.append(self.model.register_forward_pre_hook(self._on_model, with_kwargs=True))
        for i in self.layers:
            self._handles.append(self.model.blocks[i].attn.register_forward_hook(self._on_attention, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_model(self, module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs["t"]
        self._t = float(t.float().mean())

    def _on_attention(self, module, args, kwargs, output) -> None:
        x = args[0]
        group_size = args[1] if len(args) > 1 else kwargs.get("group_size", 1)
        if group_size < 2 or self._t is None or not self.t_low <= self._t <= self.t_high:
            return
        if group_size != self.group_size or (x.shape[0] // group_size) % self.num_groups:
            raise ValueError(
                f"recorder set up for {self.num_groups} groups of {self.group_size}, but a layer ran "
                f"{x.shape[0] // group_size} groups of {group_size}"
            )
        scores = cross_sample_score(attention_mass(module, x, group_size)).double().cpu()  # (k*B, N)
        scores = scores.reshape(-1, self.num_groups * group_size)  # one row per stacked branch
        self.total += scores.sum(dim=0)
        self.count += scores.shape[0]
        self.calls += 1

    def per_image(self) -> torch.Tensor:
        """Mean S_cross per sampled image (B*N,), NaN where no call was recorded."""
        return torch.where(self.count > 0, self.total / self.count.clamp(min=1), torch.full_like(self.total, float("nan")))
