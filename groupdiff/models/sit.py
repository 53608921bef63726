"""SiT with group attention (GroupDiff), readable top to bottom: block, final layer, model, name table.

A batch holds ``B`` groups of ``N`` images laid out ``(B*N, C, H, W)``; images of one group are
contiguous. Only self-attention mixes images (over all ``N*L`` tokens of a group); adaLN modulation,
the MLP and the final layer stay per image, and every image gets the same 2D positional embedding.
The GroupDiff sample-index embedding is added to the conditioning ``c`` only when ``N > 1``, so a
group of one is numerically plain SiT (and an official SiT checkpoint behaves exactly as trained).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .layers import (
    GroupAttention,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    SampleEmbedder,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    modulate,
)

# Value checks of the forward's inputs on an accelerator (each one a host sync): see SiT.check_inputs.
DEBUG_CHECKS = os.environ.get("GROUPDIFF_DEBUG_CHECKS", "") == "1"


class SiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning and group self-attention."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = GroupAttention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=lambda: nn.GELU(approximate="tanh"),
            drop=0,
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, group_size: int = 1) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), group_size)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SiT(nn.Module):
    """Scalable Interpolant Transformer with GroupDiff group attention.

    Constructor keywords follow the official SiT (``input_size``, ``patch_size``, ``in_channels``,
    ``hidden_size``, ``depth``, ``num_heads``, ``mlp_ratio``, ``class_dropout_prob``, ``num_classes``,
    ``learn_sigma``) plus ``max_group_size`` (rows of the sample-index table) and ``time_convention``
    (``"noise_at_1"``: ours; ``"noise_at_0"``: official SiT weights, converted in :meth:`forward`).
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        max_group_size: int = 16,
        time_convention: str = "noise_at_1",
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size={input_size} is not divisible by patch_size={patch_size}")
        if time_convention not in ("noise_at_1", "noise_at_0"):
            raise ValueError(f"time_convention={time_convention!r}; expected 'noise_at_1' or 'noise_at_0'")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.max_group_size = max_group_size
        self.time_convention = time_convention

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.s_embedder = SampleEmbedder(max_group_size, hidden_size)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([SiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official DiT/SiT initialisation (adaLN-Zero) plus N(0, 0.02) for the sample-index table."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        grid = int(self.x_embedder.num_patches**0.5)
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.s_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    @property
    def null_label(self) -> int:
        """Index of the unconditional (null) label row."""
        return self.num_classes

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) tokens -> (B, C, H, W) images."""
        c = self.out_channels
        p = self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, group_size: int) -> None:
        """Raise a ValueError naming the bad value when the layout or contents are wrong.

        The layout checks read shapes only. The value checks (finite timesteps, labels in range) read the
        tensors, which on an accelerator is a device-to-host sync on every forward; there they run only
        when :data:`DEBUG_CHECKS` is set (``GROUPDIFF_DEBUG_CHECKS=1``). Values are validated at the data
        boundary instead: the training labels by ``train.data.check_dataset`` when the set is loaded,
        sampling's classes by the sampler, and timesteps come from the transport's own draws.
        """
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if group_size > self.max_group_size:
            raise ValueError(f"group_size={group_size} exceeds max_group_size={self.max_group_size} of this model")
        if x.ndim != 4:
            raise ValueError(f"x must be (B*N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] % group_size:
            raise ValueError(
                f"batch of {x.shape[0]} images is not divisible by group_size={group_size}; "
                "lay out x as (B*N, C, H, W) with the N images of each group contiguous"
            )
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(
                f"t and y must have shape ({x.shape[0]},), got t {tuple(t.shape)} and y {tuple(y.shape)}"
            )
        if DEBUG_CHECKS or (t.device.type == "cpu" and y.device.type == "cpu"):
            self.check_input_values(t, y)

    def check_input_values(self, t: torch.Tensor, y: torch.Tensor) -> None:
        """Raise a ValueError naming the first non-finite timestep or out-of-range label (reads the values)."""
        if not torch.isfinite(t).all():
            bad = t[~torch.isfinite(t)][0].item()
            raise ValueError(f"timesteps must be finite, got {bad}")
        if (y < 0).any() or (y > self.num_classes).any():
            bad = y[(y < 0) | (y > self.num_classes)][0].item()
            raise ValueError(f"label {bad} out of range [0, {self.num_classes}] ({self.num_classes} = null label)")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        group_size: int = 1,
        sample_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the velocity (our convention: t=1 noise) for ``B`` groups of ``group_size`` images.

        x: (B*N, C, H, W); t: (B*N,) in [0, 1]; y: (B*N,) labels (``num_classes`` = null);
        sample_ids: (B*N,) member ids in ``[0, max_group_size)``; drawn at random per group if omitted
        (ignored when ``group_size == 1``). Returns (B*N, out_channels, H, W).
        """
        self.check_inputs(x, t, y, group_size)
        if self.time_convention == "noise_at_0":
            t = 1.0 - t  # official SiT: t=0 is noise
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training, group_size)
        if group_size > 1:
            if sample_ids is None:
                sample_ids = self.s_embedder.random_ids(x.shape[0] // group_size, group_size, x.device)
            c = c + self.s_embedder(sample_ids)
        for block in self.blocks:
            h = block(h, c, group_size)
        out = self.unpatchify(self.final_layer(h, c))
        if self.time_convention == "noise_at_0":
            # official SiT predicts data - noise: negate the velocity channels (sigma channels untouched)
            out = torch.cat([-out[:, : self.in_channels], out[:, self.in_channels :]], dim=1)
        return out


def _sizes(depth: int, hidden_size: int, num_heads: int):
    def make(patch_size: int):
        def constructor(**kwargs) -> SiT:
            return SiT(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size, **kwargs)

        constructor.__doc__ = f"SiT depth {depth}, hidden {hidden_size}, {num_heads} heads, patch {patch_size}."
        return constructor

    return make


_XL, _L, _B, _S = _sizes(28, 1152, 16), _sizes(24, 1024, 16), _sizes(12, 768, 12), _sizes(12, 384, 6)

SiT_XL_2, SiT_XL_4, SiT_XL_8 = _XL(2), _XL(4), _XL(8)
SiT_L_2, SiT_L_4, SiT_L_8 = _L(2), _L(4), _L(8)
SiT_B_2, SiT_B_4, SiT_B_8 = _B(2), _B(4), _B(8)
SiT_S_2, SiT_S_4, SiT_S_8 = _S(2), _S(4), _S(8)

SiT_models = {
    "SiT-XL/2": SiT_XL_2, "SiT-XL/4": SiT_XL_4, "SiT-XL/8": SiT_XL_8,
    "SiT-L/2": SiT_L_2, "SiT-L/4": SiT_L_4, "SiT-L/8": SiT_L_8,
    "SiT-B/2": SiT_B_2, "SiT-B/4": SiT_B_4, "SiT-B/8": SiT_B_8,
    "SiT-S/2": SiT_S_2, "SiT-S/4": SiT_S_4, "SiT-S/8": SiT_S_8,
}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; the fixed positional embedding is not trainable."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_image(model: SiT, group_size: int = 1) -> float:
    """Forward FLOPs per image (2 per MAC): linear layers plus attention scores/values over N*L tokens."""
    length = model.x_embedder.num_patches
    hidden = model.pos_embed.shape[-1]
    depth = len(model.blocks)
    mlp_hidden = model.blocks[0].mlp.fc1.out_features if depth else 0
    linear = depth * length * (4 * hidden * hidden + 2 * hidden * mlp_hidden)
    attention = depth * length * (group_size * length) * hidden * 2  # QK^T and PV
    return 2.0 * (linear + attention)

