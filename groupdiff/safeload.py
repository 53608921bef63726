"""Reading weights files without running code: safetensors, or ``torch.load(weights_only=True)``.

Every loader of weights in the library goes through :func:`load_tensor_file` (or checks a safetensors file
with :func:`safetensors_problem` first). A pickle that would build anything but tensors and plain containers
(a ``__reduce__`` calling ``os.system``, a class from any module) is refused by torch's weights-only
unpickler before any of it runs; a truncated or corrupt file is refused too. Either way the error is one
:class:`CheckpointError` line naming the file and what it should hold.

Torch-free to import (the CLI and ``CheckpointDir`` use :func:`safetensors_problem`).
"""
from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any

WEIGHTS_ONLY_HINT = ("save tensors with safetensors (safetensors.torch.save_file) or torch.save(model.state_dict()); "
                     "pickled Python objects are never loaded")


class CheckpointError(ValueError):
    """A weights or checkpoint file that is there but unreadable or refused (the message names the file and
    what it should hold)."""


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header length, JSON header, data size), or None."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (length,) = struct.unpack("<Q", raw)
        if 8 + length > size:
            return f"header of {length} bytes does not fit in {size} bytes"
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            return f"unreadable header: {exc}"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        return f"header entries lack data_offsets ({exc!r})"
    if 8 + length + end > size:
        return f"truncated: tensors end at byte {8 + length + end} of {size}"
    return None


def load_tensor_file(path: str | Path, expected: str) -> Any:
    """What the weights file at ``path`` holds, read without running code: a safetensors file (by its name or
    its content) gives a dict of CPU tensors; any other file is read with ``torch.load(weights_only=True)`` (tensors, dicts,
    lists, numbers, strings). ``expected`` says what the file should hold (it ends every error message).

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for a corrupt file or one
    whose pickle asks for anything else (nothing of it is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; expected {expected}")
    problem = safetensors_problem(path)
    if path.suffix == ".safetensors" or problem is None:  # by name, or by content whatever the name
        if problem:
            raise CheckpointError(f"weights file {str(path)!r} is corrupt ({problem}); expected {expected}")
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError (bad dtype, overlapping offsets, ...) has no public base class
            raise CheckpointError(f"weights file {str(path)!r} is not a valid safetensors file "
                                  f"({_first_line(exc)}); expected {expected}") from None
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"weights file {str(path)!r} holds pickled Python objects that the weights-only loader refuses "
            f"({_refusal(exc)}); nothing in it was run; expected {expected} ({WEIGHTS_ONLY_HINT})") from None
    except Exception as exc:  # a truncated zip, random bytes, a safetensors file named .pt, ...
        raise CheckpointError(f"weights file {str(path)!r} is not readable as a torch or safetensors file "
                              f"({type(exc).__name__}: {_first_line(exc)}); expected {expected}") from None


def check_weights_file(path: str | Path, expected: str) -> None:
    """Refuse ``path`` before a third-party loader (timm, open_clip) reads it: a ``.safetensors`` file gets
    :func:`safetensors_problem` (its header, cheap); any other file one weights-only read, so a pickle
    carrying code is refused here whatever that library's own ``torch.load`` defaults are."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        problem = safetensors_problem(path)
        if problem:
            raise CheckpointError(f"weights file {str(path)!r} is corrupt ({problem}); expected {expected}")
    else:
        load_tensor_file(path, expected)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _refusal(exc: BaseException) -> str:
    """The unpickler's reason (e.g. ``it asks for the Python global posix.system``) out of torch's long message."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks for the Python global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return found.group(1).strip()[:200] if found else _first_line(exc)
