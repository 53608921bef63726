"""Run checkpoints: written atomically, found again by ``resume: auto``, pruned to the last K.

Layout of ``<run>/checkpoints/step_XXXXXXXX/``::

    ds/                 DeepSpeed checkpoint (tag ``state``; model, optimizer, every rank's ZeRO shards)
    model.safetensors   consolidated EMA weights (what the sampler loads)
    weights.safetensors consolidated raw weights (resume on another world size)
    config.json         the full GroupDiffConfig of the run
    trainer_state.json  step, epoch, batch index, world size, counters
    rng/rank<r>.pt      each rank's torch RNG states

Every rank writes into ``.tmp-step_XXXXXXXX``; after a barrier rank 0 renames it to its final name and
only then rewrites the ``latest`` pointer (itself via a temp file and ``os.replace``). A crash at any
point leaves either the previous ``latest`` or the new one, never a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import GroupDiffConfig
from ..weights import EMA_FILE, RAW_FILE

LATEST = "latest"
TAG = "state"
# Train fields a resumed run must share with its checkpoint: the epoch plans and draws depend on them.
RESUME_FIXED_FIELDS = ("variant", "group_size", "group_ratio", "global_batch_images", "seed")


def checkpoint_root(run_dir: str | Path) -> Path:
    """``<run>/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint at ``step``."""
    return f"step_{step:08d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temp file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def save_checkpoint(engine, ema, config: GroupDiffConfig, state: dict[str, Any], run_dir: str | Path,
                    rank: int, keep_last: int) -> Path:
    """Save a checkpoint at ``state['step']`` on every rank (a collective call); returns its folder."""
    from safetensors.torch import save_file

    from .optim import full_state_dict

    root = checkpoint_root(run_dir)
    name = step_dir_name(int(state["step"]))
    tmp, final = root / f".tmp-{name}", root / name
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / "rng").mkdir()
    _barrier()
    engine.save_checkpoint(str(tmp / "ds"), tag=TAG, client_state={"trainer_state": state}, save_latest=False)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / "rng" / f"rank{rank}.pt")
    raw = full_state_dict(engine.module)  # collective under ZeRO-3
    if rank == 0:
        save_file(ema.state_dict(), str(tmp / EMA_FILE))
        save_file(raw, str(tmp / RAW_FILE))
        (tmp / "config.json").write_text(config.model_dump_json(indent=2))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    _barrier()
    if rank == 0:
        if final.exists():  # the same step saved again (e.g. a resumed run's final checkpoint): replace it
            old = root / f".old-{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(name)
        os.replace(pointer, root / LATEST)
        prune(root, keep_last)
    _barrier()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temp folders never count)."""
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "trainer_state.json").exists())


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (the one ``latest`` names is always kept)."""
    latest = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
    for old in list_checkpoints(root)[:-keep_last]:
        if old.name != latest:
            shutil.rmtree(old)


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names; if the pointer is missing or stale, the newest complete folder."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if pointer.exists():
        named = root / pointer.read_text().strip()
        if (named / "trainer_state.json").exists():
            return named
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """Checkpoint folder to resume from: None for 'off' (or 'auto' with no checkpoint yet)."""
    if resume == "off":
        return None
    if resume == "auto":
        return find_latest(run_dir)
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"train.resume={resume!r}: no such checkpoint or run directory")
    if (path / "trainer_state.json").exists():
        return path
    latest = find_latest(path)
    if latest is None:
        raise FileNotFoundError(
            f"train.resume={resume!r} is neither a checkpoint folder (with trainer_state.json) nor a run "
            "directory holding checkpoints/"
        )
    return latest


def read_checkpoint_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer_state, config dict) of a checkpoint folder."""
    state = json.loads((path / "trainer_state.json").read_text())
    config = json.loads((path / "config.json").read_text())
    return state, config


def check_resumable(path: Path, config: GroupDiffConfig) -> dict[str, Any]:
    """Refuse a checkpoint of another model or data order (before any compute); return its trainer state."""
    state, saved = read_checkpoint_meta(path)
    ours = config.model.model_dump()
    diff = {k: (saved["model"].get(k), v) for k, v in ours.items() if saved["model"].get(k) != v}
    if diff:
        detail = ", ".join(f"model.{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {str(path)!r} is from another model ({detail})")
    fixed = {k: (saved["train"].get(k), getattr(config.train, k)) for k in RESUME_FIXED_FIELDS
             if saved["train"].get(k) != getattr(config.train, k)}
    if fixed:
        detail = ", ".join(f"train.{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in fixed.items())
        raise ValueError(
            f"cannot resume {str(path)!r} exactly ({detail}); to start a new run from its weights use "
            f"train.init_from=pretrained:{path / 'weights.safetensors'}"
        )
    return state


def load_rng(path: Path, rank: int) -> None:
    """Restore this rank's torch RNG states (weights-only load)."""
    file = path / "rng" / f"rank{rank}.pt"
    if not file.exists():
        return
    rng = torch.load(file, map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
