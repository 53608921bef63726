"""Batch arithmetic and the DeepSpeed config, both derived from :class:`TrainConfig` (one source of truth).

``global_batch_images = micro_batch_images * accumulation * world_size``: the global batch is fixed by
the config, the world size comes from the launcher, and the accumulation count follows. Every number
DeepSpeed sees is computed here, so the JSON config can never disagree with the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import TrainConfig


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's images are spread over ranks and micro batches."""

    global_images: int
    world_size: int
    micro_images: int
    accumulation: int
    group_size: int

    @property
    def rank_images(self) -> int:
        """Images one rank handles per optimizer step."""
        return self.micro_images * self.accumulation


def batch_layout(config: TrainConfig, world_size: int) -> BatchLayout:
    """Check the batch numbers against ``world_size`` and derive the accumulation count.

    Raises ValueError naming the numbers when the global batch cannot be split into whole groups per
    rank, or the rank's share into whole micro batches.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n = config.effective_group_size
    total = config.global_batch_images
    if total % (world_size * n):
        raise ValueError(
            f"train.global_batch_images={total} cannot be split over world_size={world_size} ranks in whole groups "
            f"of N={n}: it must be divisible by world_size*N={world_size * n}"
        )
    rank_images = total // world_size
    micro = config.micro_batch_images or rank_images
    if micro > rank_images or rank_images % micro:
        raise ValueError(
            f"train.micro_batch_images={micro} must divide each rank's share of the global batch "
            f"({total} images / {world_size} ranks = {rank_images})"
        )
    return BatchLayout(total, world_size, micro, rank_images // micro, n)


def use_bf16(config: TrainConfig, device_type: str) -> bool:
    """bf16 on GPU and fp32 on CPU for ``precision='auto'``; an explicit choice is honoured on any device."""
    return config.precision == "bf16" or (config.precision == "auto" and device_type == "cuda")


def deepspeed_config(config: TrainConfig, world_size: int, device_type: str) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``config`` on ``world_size`` ranks of ``device_type`` ('cpu' or 'cuda').

    DeepSpeed's own batch check (``train_batch_size = micro * accumulation * world``) then holds by
    construction. The optimizer section is set only with ``offload_optimizer`` (DeepSpeed's CPU Adam);
    otherwise the trainer hands DeepSpeed a torch AdamW with its parameter groups.
    """
    layout = batch_layout(config, world_size)
    bf16 = use_bf16(config, device_type)
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    ds: dict[str, Any] = {
        "train_batch_size": layout.global_images,
        "train_micro_batch_size_per_gpu": layout.micro_images,
        "gradient_accumulation_steps": layout.accumulation,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # our tracker logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if config.offload_optimizer:
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": config.lr, "betas": [config.beta1, config.beta2], "eps": config.eps,
                       "weight_decay": config.weight_decay},
        }
    return ds
