"""Resume on another world size through DeepSpeed's universal checkpoint format.

A DeepSpeed ZeRO checkpoint (``<checkpoint>/ds/state``) holds each rank's partition of the fp32 master
weights and of the AdamW moments, so it loads only on the world size that wrote it. DeepSpeed's
``ds_to_universal`` (``deepspeed.checkpoint.ds_to_universal``) rewrites it as one file per parameter and
state (``zero/<param>/fp32.pt``, ``exp_avg.pt``, ``exp_avg_sq.pt``, ``step.pt``), which any world size
loads with ``{"checkpoint": {"load_universal": true}}`` in the DeepSpeed config: weights, optimizer
moments and step counts all carry over, so a run saved on 2 ranks continues on 1 rank (or 8) as it would
have on 2, up to float summation order.

The conversion runs once per checkpoint, on rank 0 of the resuming run, into ``<checkpoint>/universal``
(written under a temp name and renamed when complete; later resumes reuse it). Both the saved and the
resuming run must use a ZeRO stage >= 1 (the universal loader belongs to DeepSpeed's ZeRO optimizers);
otherwise the trainer falls back to the consolidated weights (``weights.safetensors``) with fresh AdamW
moments and says so in ``init_report.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from ..atomic import atomic_dir
from .checkpoint import CheckpointDir

if TYPE_CHECKING:  # annotations only: the composed config imports this package's section
    from ..config import GroupDiffConfig

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file name inside a tag folder


def universal_dir(checkpoint: str | Path) -> Path:
    """``<checkpoint>/universal``: the load folder of the universal copy (tag folder inside)."""
    return CheckpointDir(checkpoint).universal_dir


def can_resume_universal(checkpoint: str | Path, config: GroupDiffConfig) -> bool:
    """True when the checkpoint and the resuming run both use ZeRO stage >= 1 (what the loader needs)."""
    saved = CheckpointDir(checkpoint).read_config()
    return int(saved["train"].get("zero_stage", 0)) >= 1 and config.train.zero_stage >= 1


def convert_to_universal(checkpoint: str | Path, tag: str) -> Path:
    """Convert ``<checkpoint>/ds/<tag>`` to ``<checkpoint>/universal/<tag>`` unless already done; returns the
    universal load folder. Runs DeepSpeed's ``ds_to_universal`` (single process) into a temp folder that is
    renamed when complete, so a crash never leaves a half-converted copy that a later resume would trust."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    checkpoint = Path(checkpoint)
    final = universal_dir(checkpoint)
    if (final / tag / MODEL_STATES).is_file():
        return final
    source = CheckpointDir(checkpoint).ds_dir / tag
    if not (source / MODEL_STATES).is_file():
        raise FileNotFoundError(
            f"checkpoint {str(checkpoint)!r} has no DeepSpeed state {str(source / MODEL_STATES)!r} to convert to the "
            "universal format (expected a folder written by groupdiff train)"
        )
    with atomic_dir(final) as tmp:  # replaces an older incomplete copy (no model states)
        args = argparse.Namespace(input_folder=str(source), output_folder=str(tmp / tag), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):  # the converter prints its progress; keep it for errors only
                ds_to_universal(args)
        except BaseException as exc:
            raise RuntimeError(f"ds_to_universal failed on {source}: {exc}\n{log.getvalue()[-2000:]}") from exc
    return final


def prepare_universal(checkpoint: str | Path, tag: str, rank: int) -> Path:
    """Rank 0 converts (:func:`convert_to_universal`), every rank waits for it; returns the load folder."""
    if rank == 0:
        convert_to_universal(checkpoint, tag)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return universal_dir(checkpoint)
