"""Sharded, restartable array outputs (embeddings, VAE latents).

Item ``i`` of a dataset belongs to shard ``i // shard_size``; rank ``r`` of ``world_size`` owns the
shards ``s`` with ``s % world_size == r``, so several processes write disjoint files. A shard is written
to a temporary name and renamed only when complete, so a restarted run recognises finished shards by
their file alone and computes only the missing ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypedDict

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_write, temp_prefix

SHARD_PATTERN = "{prefix}-{index:05d}.npy"


def shard_path(out_dir: Path, prefix: str, index: int) -> Path:
    """File of shard ``index``."""
    return Path(out_dir) / SHARD_PATTERN.format(prefix=prefix, index=index)


def num_shards(num_items: int, shard_size: int) -> int:
    """Shards needed to hold ``num_items``."""
    return -(-num_items // shard_size)


def save_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    with atomic_write(path) as f:
        np.save(f, array)


class ShardStageResult(TypedDict, total=False):
    """What a sharded stage (``embed``, ``encode-latents``) returns on one rank, as its CLI prints it and its
    flow task records it: a plain dict (JSON as it is) with these keys."""

    computed: list[int]  # shards this rank computed
    skipped: list[int]  # shards already on disk (a resumed or shared run)
    complete: bool  # every rank's shards are there: the folder can be loaded
    manifest: dict[str, Any]  # the folder's manifest (digests of the inputs, counts, shapes)
    dataset_report: dict[str, Any]  # the dataset's own report (images read, skipped files)


def run_shards(num_items: int, shard_size: int, out_dir: Path, prefix: str,
               compute: Callable[[np.ndarray], np.ndarray], rank: int = 0, world_size: int = 1,
               desc: str = "shards") -> ShardStageResult:
    """Compute this rank's missing shards with ``compute(indices) -> array`` and write each atomically.

    Returns ``{"computed": [...], "skipped": [...]}`` shard numbers.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, world_size={world_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = [s for s in range(num_shards(num_items, shard_size)) if s % world_size == rank]
    done: ShardStageResult = {"computed": [], "skipped": []}
    for s in tqdm(mine, desc=f"{desc} (rank {rank}/{world_size})", unit="shard"):
        path = shard_path(out_dir, prefix, s)
        if path.exists():
            done["skipped"].append(s)
            continue
        for stale in path.parent.glob(f"{temp_prefix(path)}*"):  # left by a killed run of this shard's owner
            stale.unlink(missing_ok=True)
        indices = np.arange(s * shard_size, min((s + 1) * shard_size, num_items), dtype=np.int64)
        array = compute(indices)
        if len(array) != len(indices):
            raise RuntimeError(f"shard {s}: computed {len(array)} rows for {len(indices)} items")
        save_atomic(path, array)
        done["computed"].append(s)
    return done


def missing_shards(num_items: int, shard_size: int, out_dir: Path, prefix: str) -> list[int]:
    """Shard numbers whose files are not there yet."""
    return [s for s in range(num_shards(num_items, shard_size)) if not shard_path(out_dir, prefix, s).exists()]


def load_shards(num_items: int, shard_size: int, out_dir: Path, prefix: str, mmap: bool = False) -> np.ndarray:
    """Concatenate all shards (error naming the missing ones)."""
    missing = missing_shards(num_items, shard_size, out_dir, prefix)
    if missing:
        raise FileNotFoundError(
            f"{out_dir}: shards {missing[:10]}{'...' if len(missing) > 10 else ''} of {prefix!r} are missing; "
            f"run the stage again (every rank) to compute them"
        )
    parts = [np.load(shard_path(out_dir, prefix, s), mmap_mode="r" if mmap else None)
             for s in range(num_shards(num_items, shard_size))]
    return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
