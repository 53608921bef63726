"""AdamW parameter groups, the warm-up schedule and the EMA of the weights (DESIGN 1.3 optimiser recipe)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from .config import TrainConfig

# Parameters matching these name parts never get weight decay (released recipe: not on norm/bias/embeddings).
NO_DECAY_PARTS = ("bias", "norm", "embedding_table", "pos_embed")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True for biases, norm weights, embedding tables and other 1-D parameters."""
    return param.ndim <= 1 or any(part in name for part in NO_DECAY_PARTS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the no-decay rest; frozen parameters (pos_embed) are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters that get no weight decay (for logging and tests)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and is_no_decay(n, p)]


def build_optimizer(model: nn.Module, config: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """torch AdamW over :func:`param_groups` (fused kernels on GPU)."""
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2),
        eps=config.eps, fused=device_type == "cuda",
    )


def warmup_factor(warmup_steps: int):
    """LR multiplier per optimizer step: linear warm-up to 1 over ``warmup_steps``, then constant."""

    def factor(step: int) -> float:
        return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)

    return factor


def ema_decay_at(step: int, config: TrainConfig) -> float:
    """EMA decay of the update made after optimizer step ``step + 1`` (``step`` = steps already taken).

    ``config.ema_warmup`` picks the form (see :class:`~groupdiff.train.config.TrainConfig`):
    ``none`` -> ``ema_decay``; ``ramp`` -> ``min(ema_decay, (1 + s) / (ema_ramp_offset + s))``;
    ``power`` -> ``min(ema_decay, (1 - 1 / (s + 1)) ** (ema_power_gamma + 1))`` (EDM2, Karras et al. 2024).
    The decay depends only on the step, which a resumed run restores, so the schedule resumes exactly.
    Both warm-ups give decay 0 or near 0 at the first update: the initialisation is forgotten at once.
    """
    if step < 0:
        raise ValueError(f"EMA step must be >= 0, got {step}")
    if config.ema_warmup == "none":
        return config.ema_decay
    if config.ema_warmup == "ramp":
        warm = (1.0 + step) / (config.ema_ramp_offset + step)
    elif config.ema_warmup == "power":
        warm = (1.0 - 1.0 / (step + 1)) ** (config.ema_power_gamma + 1.0)
    else:
        raise ValueError(f"train.ema_warmup={config.ema_warmup!r}; expected 'none', 'ramp' or 'power'")
    return min(config.ema_decay, warm)


class EMA:
    """Exponential moving average of every tensor in a model's state dict, kept in fp32.

    Trainable parameters follow ``ema = decay * ema + (1 - decay) * param``; frozen ones (the fixed
    positional embedding) are copied. The official SiT keeps its EMA the same way (``update_ema``).
    ``decay`` is a constant or a function of the step (:func:`ema_decay_at`); the step is passed to
    :meth:`update` by the trainer, so the EMA holds no counter of its own and a resumed run, which
    restores the step, continues the schedule exactly.

    Not ``ema-pytorch``: it keeps a deep copy of the module (under ZeRO-3 a copy of partitioned
    parameters, i.e. of empty shards) and its own step buffer that would have to be checkpointed beside
    DeepSpeed's state; these few lines read the gathered weights and take the step from the trainer.
    """

    def __init__(self, model: nn.Module, decay: float | Callable[[int], float]):
        self.decay = decay
        with gathered(model):
            self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        """The decay used by the update after ``step`` optimizer steps were taken."""
        return float(self.decay(step)) if callable(self.decay) else float(self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> float:
        """One EMA step from the model's current weights (``step`` = optimizer steps taken before the one
        just made); returns the decay used."""
        decay = self.decay_at(step)
        with gathered(model):
            moving, values = [], []
            for name, param in model.named_parameters():
                if param.requires_grad:
                    moving.append(self.shadow[name])
                    values.append(param.detach().float())
                else:
                    self.shadow[name].copy_(param.detach().float())
            if moving:
                torch._foreach_lerp_(moving, values, 1.0 - decay)  # one fused kernel per dtype/device
        return decay

    @torch.no_grad()
    def relative_difference(self, model: nn.Module) -> float:
        """``||ema - raw|| / ||raw||`` over the trainable parameters (how far the sampled weights lag)."""
        with gathered(model):
            pairs = [(self.shadow[n], p.detach().float()) for n, p in model.named_parameters() if p.requires_grad]
        if not pairs:
            return 0.0
        diff = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(e - r) for e, r in pairs]))
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(r) for _, r in pairs]))
        return float(diff / norm.clamp_min(1e-30))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights (contiguous CPU fp32 tensors, safetensors-ready)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the EMA weights; keys and shapes must match."""
        for key, value in self.shadow.items():
            if key not in state:
                raise KeyError(f"EMA state lacks {key!r}")
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(f"EMA shape mismatch for {key!r}: {tuple(state[key].shape)} vs {tuple(value.shape)}")
            value.copy_(state[key].to(value.device, value.dtype))


def _zero3_params(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Under ZeRO-3 gather the partitioned parameters for reading (a no-op otherwise)."""
    params = _zero3_params(model)
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full weights as contiguous CPU fp32 tensors (gathered under ZeRO-3)."""
    with gathered(model):
        return {k: v.detach().float().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def global_grad_norm(params: Iterable[torch.Tensor]) -> float:
    """L2 norm of the gradients present on ``params`` (ZeRO-0 before the step; reduced already)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return float("nan")
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
