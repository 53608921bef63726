"""Training configuration (owned by the training stage): variant, batch sizes, optimiser, DeepSpeed, checkpoints.

Batch sizes have one source: ``global_batch_images`` (images per optimizer step over all ranks) and
``micro_batch_images`` (images one rank pushes through the model at once; 0 = its whole share). The
gradient-accumulation count follows from them and the world size (:mod:`groupdiff.train.ds_config`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config_base import Section


class TrainConfig(Section):
    """Training variant and optimisation (DESIGN 1.3, 2.5)."""

    variant: Literal["baseline", "groupdiff-l", "groupdiff-f"] = Field("baseline", description="Training recipe (DESIGN 1.3).")
    group_size: int = Field(4, ge=1, le=256, description="Images per group N for GroupDiff variants (baseline uses 1).")
    group_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="GroupDiff-l: share of each epoch's batches that are unconditional group batches."
    )
    global_batch_images: int = Field(256, ge=1, le=1_000_000, description="Images per optimizer step across all ranks.")
    micro_batch_images: int = Field(
        0, ge=0, le=1_000_000,
        description="Images per rank per forward/backward (0 = the rank's whole share, no accumulation).",
    )
    steps: int = Field(
        1000, ge=1, le=100_000_000, description="Total optimizer steps of the run (a resumed run continues to this)."
    )
    seed: int = Field(
        0, ge=0, description="Seed for initialisation, epoch plans, timesteps, noise, sample ids and label dropout."
    )

    lr: float = Field(1e-4, gt=0.0, le=1.0, description="AdamW learning rate (constant after warm-up).")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="Linear learning-rate warm-up steps (0 = none).")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2 (SiT's own default: 0.999).")
    eps: float = Field(1e-8, gt=0.0, le=1e-2, description="AdamW epsilon.")
    weight_decay: float = Field(
        0.01, ge=0.0, le=1.0, description="AdamW weight decay; never applied to norm, bias or embedding parameters."
    )
    grad_clip: float = Field(3.0, ge=0.0, le=1e6, description="Max global gradient norm (0 = no clipping).")
    ema_decay: float = Field(
        0.9999, ge=0.0, le=1.0,
        description="EMA decay per optimizer step once warmed up: the cap of the warm-up schedule "
        "(0 = EMA equals the weights; 1 = frozen unless the warm-up is below it).",
    )
    ema_warmup: Literal["none", "ramp", "power"] = Field(
        "ramp",
        description="EMA warm-up: decay at update s (s = optimizer steps already taken) is "
        "'none': ema_decay; 'ramp': min(ema_decay, (1 + s) / (ema_ramp_offset + s)); "
        "'power' (EDM2 power-function EMA): min(ema_decay, (1 - 1/(s + 1))^(ema_power_gamma + 1)).",
    )
    ema_ramp_offset: float = Field(
        10.0, gt=1.0, le=1e9,
        description="'ramp' warm-up: the 10 of (1 + s) / (10 + s); larger = longer warm-up (the EMA averages "
        "over about the last (s + offset) / (offset - 1) steps).",
    )
    ema_power_gamma: float = Field(
        6.94, gt=0.0, le=1e6,
        description="'power' warm-up: exponent gamma of EDM2's power-function EMA (6.94 = relative std 0.05; "
        "smaller = longer averaging window relative to the run's length).",
    )

    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0 = plain data parallel).")
    offload_optimizer: bool = Field(
        False, description="ZeRO-Offload: keep optimizer states on CPU (uses DeepSpeed's CPU Adam; needs zero_stage >= 1)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU; bf16 = DeepSpeed bf16 (fp32 master weights) anywhere."
    )
    num_threads: int = Field(0, ge=0, le=256, description="torch CPU threads per rank (0 = torch default).")

    init_from: str = Field(
        "scratch",
        description="'scratch' or 'pretrained:<path>' (an official SiT checkpoint: plain state dict or "
        "{model, ema, opt, args}, .pt/.pth/.safetensors; loaded weights-only).",
    )
    resume: str = Field(
        "off", description="'off', 'auto' (latest checkpoint of the run directory, if any) or a checkpoint directory path."
    )
    groups_path: str = Field(
        "",
        description="Group table (.npz written by `groupdiff mine`, mined on this run's data) whose neighbours "
        "form the groups; empty = same-class neighbours drawn from the labels.",
    )
    class_neighbours: int = Field(
        32, ge=1, le=10_000, description="Neighbours per image when they are drawn from labels (groups_path empty)."
    )

    log_every: int = Field(10, ge=1, le=1_000_000, description="Optimizer steps between metric records.")
    checkpoint_every: int = Field(
        1000, ge=1, le=100_000_000, description="Optimizer steps between checkpoints (one is also written at the end)."
    )
    keep_last: int = Field(3, ge=1, le=1000, description="Checkpoints kept; older ones are deleted.")
    probe_every: int = Field(
        0, ge=0, le=100_000_000, description="Steps between group-benefit probes (0 = off; GroupDiff variants only)."
    )
    probe_groups: int = Field(16, ge=2, le=4096, description="Fixed groups of N images the probe evaluates.")
    record_indices: bool = Field(
        False, description="Debug: each rank appends the dataset indices it trained on to <run>/indices/rank<r>.jsonl."
    )

    @field_validator("init_from")
    @classmethod
    def _check_init(cls, value: str) -> str:
        if value != "scratch" and not (value.startswith("pretrained:") and len(value) > len("pretrained:")):
            raise ValueError(f"train.init_from={value!r}; expected 'scratch' or 'pretrained:<path>'")
        return value

    @field_validator("resume")
    @classmethod
    def _check_resume(cls, value: str) -> str:
        if not value:
            raise ValueError("train.resume is empty; expected 'off', 'auto' or a checkpoint directory path")
        return value

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        n = self.effective_group_size
        if self.global_batch_images % n:
            raise ValueError(
                f"train.global_batch_images={self.global_batch_images} is not divisible by train.group_size={n}: "
                "a batch must hold whole groups"
            )
        if self.micro_batch_images and self.micro_batch_images % n:
            raise ValueError(
                f"train.micro_batch_images={self.micro_batch_images} is not divisible by train.group_size={n}: "
                "a micro batch must hold whole groups"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("train.offload_optimizer=true needs train.zero_stage >= 1")
        return self

    @property
    def effective_group_size(self) -> int:
        """N used by this variant's group batches (1 for the baseline)."""
        return 1 if self.variant == "baseline" else self.group_size

    @property
    def pretrained_path(self) -> str | None:
        """The path after ``pretrained:``, or None when training from scratch."""
        return self.init_from.split(":", 1)[1] if self.init_from.startswith("pretrained:") else None
