"""Run checkpoints: one :class:`CheckpointDir` type, written atomically, found again by ``resume: auto``,
pruned to the last K.

Layout of ``<run>/checkpoints/step_XXXXXXXX/`` (the names are :class:`CheckpointDir`'s attributes)::

    ds/                 DeepSpeed checkpoint (tag ``state``; model, optimizer, every rank's ZeRO shards)
    model.safetensors   consolidated EMA weights (what the sampler loads)
    weights.safetensors consolidated raw weights (resume on another world size)
    config.json         the full GroupDiffConfig of the run
    trainer_state.json  step, epoch, batch index, world size, counters
    rng/rank<r>.pt      each rank's torch RNG states
    universal/          DeepSpeed's universal copy of ``ds/`` (made on demand, see ``universal.py``)

Every rank writes into ``.tmp-step_XXXXXXXX``; after a barrier rank 0 renames it to its final name and
only then rewrites the ``latest`` pointer (itself written atomically). A crash at any point leaves either
the previous ``latest`` or the new one, never a half-written checkpoint.

Fault-injection hook (tests only, off unless ``$GROUPDIFF_CHECKPOINT_HOLD`` is set): ``POINT:STEP`` makes
rank 0 stop inside the save of the checkpoint at ``STEP`` and wait there while the marker file
``checkpoints/.hold-POINT-STEP`` exists (delete it to go on, or kill the process). ``POINT`` is one of
:data:`HOLD_POINTS`: ``start`` (nothing of it written yet), ``partial`` (its temp folder holds the
DeepSpeed state, the RNG states and ``model.safetensors``, not the rest), ``done`` (renamed, ``latest``
rewritten). ``tests/faults`` SIGKILLs the training there.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..atomic import replace_dir, write_text_atomic
from ..safeload import CheckpointError, load_tensor_file, safetensors_problem

if TYPE_CHECKING:
    from ..config import GroupDiffConfig

LATEST = "latest"
TAG = "state"
# Train fields a resumed run must share with its checkpoint: the epoch plans and draws depend on them.
RESUME_FIXED_FIELDS = ("variant", "group_size", "group_ratio", "global_batch_images", "seed")
HOLD_ENV = "GROUPDIFF_CHECKPOINT_HOLD"  # fault-injection hook of the tests, see the module docstring
HOLD_POINTS = ("start", "partial", "done")


@dataclass(frozen=True)
class CheckpointDir:
    """One checkpoint folder: the names of its files, how they are written and how they are checked.

    Torch-free to import (the CLI and flows use the names); writing needs torch and safetensors."""

    path: Path

    EMA: ClassVar[str] = "model.safetensors"
    RAW: ClassVar[str] = "weights.safetensors"
    CONFIG: ClassVar[str] = "config.json"
    STATE: ClassVar[str] = "trainer_state.json"
    DS: ClassVar[str] = "ds"
    RNG: ClassVar[str] = "rng"
    UNIVERSAL: ClassVar[str] = "universal"
    WEIGHT_FILES: ClassVar[dict[str, str]] = {"ema": EMA, "raw": RAW}  # by ``Weights`` choice
    FILES: ClassVar[tuple[str, ...]] = (EMA, RAW, CONFIG, STATE)  # the single files every checkpoint holds
    EXPECTED: ClassVar[dict[str, str]] = {
        EMA: "the consolidated EMA weights (safetensors)", RAW: "the consolidated raw weights (safetensors)",
        CONFIG: "the run's GroupDiffConfig (JSON)", STATE: "the trainer state: step, epoch, world size (JSON)",
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def ema_file(self) -> Path:
        return self.path / self.EMA

    @property
    def raw_file(self) -> Path:
        return self.path / self.RAW

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def state_file(self) -> Path:
        return self.path / self.STATE

    @property
    def ds_dir(self) -> Path:
        return self.path / self.DS

    @property
    def universal_dir(self) -> Path:
        return self.path / self.UNIVERSAL

    def weights_file(self, weights: str = "ema") -> Path:
        """The weights file of a ``Weights`` choice ('ema' or 'raw')."""
        if weights not in self.WEIGHT_FILES:
            raise ValueError(f"weights={weights!r}; expected one of {sorted(self.WEIGHT_FILES)}")
        return self.path / self.WEIGHT_FILES[weights]

    def rng_file(self, rank: int) -> Path:
        return self.path / self.RNG / f"rank{rank}.pt"

    def is_complete(self) -> bool:
        """True once the trainer state is there (written last, inside the temp folder, before the rename)."""
        return self.state_file.is_file()

    def require(self, *names: str, needed_for: str = "") -> "CheckpointDir":
        """Check the files ``names`` (default: :attr:`FILES`); returns self. A missing one raises
        ``FileNotFoundError``, a truncated or unreadable one :class:`CheckpointError`; both name the file,
        what it should hold and ``needed_for`` (why the caller needs it)."""
        for name in names or self.FILES:
            file = self.path / name
            what = self.EXPECTED.get(name, name)
            if not file.is_file():
                why = f"; {needed_for}" if needed_for else ""
                raise FileNotFoundError(f"checkpoint dir {str(self.path)!r} has no {name} ({what}){why}; expected a "
                                        "folder written by groupdiff train (checkpoints/step_XXXXXXXX)")
            problem = safetensors_problem(file) if name.endswith(".safetensors") else _json_problem(file)
            if problem:
                raise CheckpointError(f"checkpoint file {str(file)!r} is corrupt ({problem}); expected {what}")
        return self

    def read_state(self) -> dict[str, Any]:
        """The trainer state (step, epoch, index, world size, counters)."""
        return json.loads(self.require(self.STATE).state_file.read_text())

    def read_config(self) -> dict[str, Any]:
        """The run's config as a dict (validate with ``GroupDiffConfig.model_validate``)."""
        return json.loads(self.require(self.CONFIG).config_file.read_text())

    def create(self) -> "CheckpointDir":
        """A fresh empty folder (any leftover of a crashed save removed) with its ``rng/`` subfolder."""
        if self.path.exists():
            shutil.rmtree(self.path)
        (self.path / self.RNG).mkdir(parents=True)
        return self

    def write_rng(self, rank: int) -> None:
        """This rank's torch RNG states."""
        import torch

        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, self.rng_file(rank))

    def write_rank0_files(self, ema_state: dict, raw_state: dict, config: GroupDiffConfig,
                          state: dict[str, Any]) -> None:
        """The consolidated weights, config and trainer state (the state last: it marks the folder complete).
        Written into the temp folder of :func:`save_checkpoint`, whose rename makes them appear at once."""
        from safetensors.torch import save_file

        save_file(ema_state, str(self.ema_file))
        hold_if_asked("partial", int(state["step"]), self.path.parent)
        save_file(raw_state, str(self.raw_file))
        self.config_file.write_text(config.model_dump_json(indent=2))
        self.state_file.write_text(json.dumps(state, indent=2))


def hold_if_asked(point: str, step: int, root: Path) -> None:
    """The fault-injection hook: wait at ``point`` of the save at ``step`` while ``root/.hold-POINT-STEP``
    exists, when ``$GROUPDIFF_CHECKPOINT_HOLD`` is ``POINT:STEP`` (unset: return at once)."""
    wanted = os.environ.get(HOLD_ENV)
    if not wanted:
        return
    where, _, at = wanted.partition(":")
    if where not in HOLD_POINTS or not at.isdigit():
        raise ValueError(f"${HOLD_ENV}={wanted!r}; expected POINT:STEP with POINT one of {HOLD_POINTS}, "
                         "e.g. 'partial:20'")
    if (where, int(at)) != (point, step):
        return
    marker = root / f".hold-{point}-{step:08d}"
    marker.write_text(str(os.getpid()))
    while marker.exists():
        time.sleep(0.05)


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not valid JSON: {exc}"
    return None


def checkpoint_root(run_dir: str | Path) -> Path:
    """``<run>/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint at ``step``."""
    return f"step_{step:08d}"


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine, ema, config: GroupDiffConfig, state: dict[str, Any], run_dir: str | Path,
                    rank: int, keep_last: int) -> Path:
    """Save a checkpoint at ``state['step']`` on every rank (a collective call); returns its folder."""
    from .optim import full_state_dict

    root = checkpoint_root(run_dir)
    name = step_dir_name(int(state["step"]))
    staging = CheckpointDir(root / f".tmp-{name}")  # the same name on every rank
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        hold_if_asked("start", int(state["step"]), root)
        staging.create()
    _barrier()
    engine.save_checkpoint(str(staging.ds_dir), tag=TAG, client_state={"trainer_state": state}, save_latest=False)
    staging.write_rng(rank)
    raw = full_state_dict(engine.module)  # collective under ZeRO-3
    if rank == 0:
        staging.write_rank0_files(ema.state_dict(), raw, config, state)
    _barrier()
    final = root / name
    if rank == 0:
        replace_dir(staging.path, final)  # the same step saved again (a resumed run's final save) replaces it
        write_text_atomic(root / LATEST, name)
        prune(root, keep_last)
        hold_if_asked("done", int(state["step"]), root)
    _barrier()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temp folders never count)."""
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and CheckpointDir(p).is_complete())


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
        if CheckpointDir(named).is_complete():
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
    if CheckpointDir(path).is_complete():
        return path
    latest = find_latest(path)
    if latest is None:
        raise FileNotFoundError(
            f"train.resume={resume!r} is neither a checkpoint folder (with {CheckpointDir.STATE}) nor a run "
            "directory holding checkpoints/"
        )
    return latest


def read_checkpoint_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer_state, config dict) of a checkpoint folder."""
    folder = CheckpointDir(path)
    return folder.read_state(), folder.read_config()


def check_resumable(path: Path, config: GroupDiffConfig) -> dict[str, Any]:
    """Refuse a checkpoint of another model or data order, or with a missing or corrupt file (before any
    compute); return its trainer state."""
    CheckpointDir(path).require()
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
            f"train.init_from=pretrained:{CheckpointDir(path).raw_file}"
        )
    return state


def load_rng(path: Path, rank: int) -> None:
    """Restore this rank's torch RNG states (weights-only load)."""
    import torch

    file = CheckpointDir(path).rng_file(rank)
    if not file.exists():
        return
    rng = load_tensor_file(file, "this rank's torch RNG states {'cpu': ByteTensor, 'cuda': ...}")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
