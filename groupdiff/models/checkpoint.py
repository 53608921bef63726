"""Loading official SiT/DiT state dicts into the GroupDiff SiT (DESIGN 1.1 "state-dict compatibility").

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors: never arbitrary unpickling.
Accepted containers: a plain state dict, or ``{"model": ..., "ema": ..., "opt": ..., "args": ...}``
(the official training checkpoints; ``ema`` is preferred). Keys may carry a ``module.`` prefix (DDP).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..safeload import CheckpointError, load_tensor_file

# Parameters GroupDiff adds on top of SiT; a plain SiT checkpoint never has them.
GROUPDIFF_NEW_KEYS = ("s_embedder.embedding_table.weight",)


@dataclass
class LoadReport:
    """What happened when a state dict was loaded: which parameters kept their fresh initialisation."""

    loaded: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)
    source_entry: str = "state_dict"

    def summary(self) -> str:
        """One human-readable line."""
        new = ", ".join(self.newly_initialised) or "none"
        return f"loaded {len(self.loaded)} tensors from '{self.source_entry}'; newly initialised: {new}"


STATE_DICT_EXPECTED = ("a SiT state dict: a .safetensors file, or a .pt/.pth/.ckpt/.bin of tensors (plain or "
                       "{model, ema, opt, args}) saved with torch.save")


def read_state_dict(path: str | Path, prefer: str = "ema") -> tuple[dict[str, torch.Tensor], str]:
    """Read tensors from a ``.safetensors`` file or a ``.pt``/``.pth``/``.ckpt`` file (weights only).

    Returns the state dict and the container entry it came from (``ema``, ``model`` or ``state_dict``).
    A missing file raises ``FileNotFoundError``; a corrupt one, or a pickle carrying anything but tensors
    and plain containers (never executed), ``CheckpointError`` naming the file and what was expected.
    """
    path = Path(path)
    obj = load_tensor_file(path, STATE_DICT_EXPECTED)
    if path.suffix == ".safetensors":
        return obj, "state_dict"
    try:
        return unwrap_state_dict(obj, prefer=prefer)
    except ValueError as exc:
        raise CheckpointError(f"weights file {str(path)!r}: {exc}; expected {STATE_DICT_EXPECTED}") from None


def unwrap_state_dict(obj: dict, prefer: str = "ema") -> tuple[dict[str, torch.Tensor], str]:
    """Pick the tensors out of an official checkpoint container and strip ``module.`` prefixes."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors")
    entry = "state_dict"
    for name in (prefer, "ema", "model"):
        if name in obj and isinstance(obj[name], dict):
            obj, entry = obj[name], name
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, expected a tensor")
        state[key.removeprefix("module.")] = value
    return state, entry


def load_official_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source_entry: str = "state_dict") -> LoadReport:
    """Load an official-layout state dict; report parameters left at their initialisation.

    Shape mismatches and keys the model does not have are errors naming the key. Only the GroupDiff
    parameters (``GROUPDIFF_NEW_KEYS``) may be missing; any other missing key is an error too.
    """
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise KeyError(f"checkpoint key {key!r} does not exist in {type(model).__name__}")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"shape mismatch for {key!r}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
    missing = [k for k in own if k not in state]
    unexpected_missing = [k for k in missing if k not in GROUPDIFF_NEW_KEYS]
    if unexpected_missing:
        raise KeyError(f"checkpoint lacks {len(unexpected_missing)} SiT keys, first {unexpected_missing[0]!r}")
    model.load_state_dict(state, strict=False)
    return LoadReport(loaded=sorted(state), newly_initialised=missing, source_entry=source_entry)


def official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in the official SiT layout (GroupDiff-only parameters removed)."""
    return {k: v for k, v in model.state_dict().items() if k not in GROUPDIFF_NEW_KEYS}
