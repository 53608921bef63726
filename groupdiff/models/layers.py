"""Building blocks of SiT/DiT: embedders, group attention, MLP and the sin-cos positional embedding.

Parameter names follow the official SiT/DiT state dict (``x_embedder.proj``, ``t_embedder.mlp``,
``y_embedder.embedding_table``, ``attn.qkv``, ``attn.proj``, ``mlp.fc1/fc2``) so that official
checkpoints load key for key. timm's ``PatchEmbed`` and ``Mlp`` are used exactly as the official code does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Mlp, PatchEmbed

__all__ = [
    "PatchEmbed",
    "Mlp",
    "TimestepEmbedder",
    "LabelEmbedder",
    "SampleEmbedder",
    "GroupAttention",
    "modulate",
    "get_2d_sincos_pos_embed",
]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: per image shift/scale broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timestep -> vector via sinusoidal frequencies and a 2-layer MLP (official layout)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        """Sinusoidal embedding of (possibly fractional) timesteps, shape (B, dim)."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> vector; row ``num_classes`` is the null label used for classifier-free guidance.

    Unlike the official embedder, label dropout is decided once per *group*, so that all members of a
    group share one condition (DESIGN 1.2). With group size 1 this is the official behaviour.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, group_size: int) -> torch.Tensor:
        """Replace whole groups' labels by the null label with probability ``dropout_prob``."""
        num_groups = labels.shape[0] // group_size
        drop = torch.rand(num_groups, device=labels.device) < self.dropout_prob
        drop = drop.repeat_interleave(group_size)
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, group_size: int = 1) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            labels = self.token_drop(labels, group_size)
        return self.embedding_table(labels)


class SampleEmbedder(nn.Module):
    """Sample-index embedding (GroupDiff): which member of its group an image is, added to ``c``."""

    def __init__(self, max_group_size: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(max_group_size, hidden_size)
        self.max_group_size = max_group_size

    def random_ids(
        self, num_groups: int, group_size: int, device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per group, the first N entries of a random permutation of ``[0, max_group_size)``; shape (B*N,)."""
        draw_device = generator.device if generator is not None else device
        scores = torch.rand(num_groups, self.max_group_size, generator=generator, device=draw_device)
        return scores.argsort(dim=1)[:, :group_size].reshape(-1).to(device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(ids)


class GroupAttention(nn.Module):
    """Multi-head self-attention whose token set spans a whole group of images (DESIGN 1.2).

    Input ``(B*N, L, D)`` is viewed as ``(B, N*L, D)``: every token of every image in a group attends to
    every token of the group (no mask). Attention runs through ``F.scaled_dot_product_attention`` so no
    ``(N*L)^2`` score matrix is materialised by the fused kernels. With N=1 this is plain ViT attention.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project grouped tokens ``(B, T, D)`` to q, k, v of shape ``(B, heads, T, head_dim)``."""
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor, group_size: int = 1) -> torch.Tensor:
        bn, length, dim = x.shape
        grouped = x.reshape(bn // group_size, group_size * length, dim)
        q, k, v = self.qkv_heads(grouped)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(grouped.shape)
        return self.proj(out).reshape(bn, length, dim)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2D sin-cos positional embedding, shape (grid_size**2, embed_dim) (MAE/DiT layout)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # w goes first, as in the official code
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = _sincos_1d(embed_dim // 2, grid[0])
    emb_w = _sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
