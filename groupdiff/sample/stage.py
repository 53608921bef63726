"""The ``sample`` stage: class-balanced groups from a checkpoint, sharded, resumable, ADM ``.npz`` out.

Layout of ``out_dir`` (one sub-folder per cfg scale, named ``cfg<scale>`` e.g. ``cfg1``, ``cfg2.5``)::

    shards/cfg<s>/shard_00000.npz   finished shards (temp name, then rename: a file here is complete)
    cfg<s>/samples.npz              arr_0 uint8 NHWC, arr_1 / labels, s_cross (N > 1), group_index
    cfg<s>/grid.png                 the first ``grid_groups`` groups, one group per row
    sample.json                     the stage config, the full model config and the outputs
    plan.json                       digest of what fixes the images; a rerun with another plan is refused

Determinism: group ``g`` of the sampling plan has label ``g % num_classes`` (class balanced, groups share
one class). The batch starting at group ``g0`` is generated with seed ``derive_seed(sampler.seed, g0)``,
so its images depend only on (seed, batch_groups, g0): not on the rank, the world size, the shard
size, or on which shards were already on disk. Every cfg scale of one call re-draws the same noise from
the same seed (``generate`` is seeded), so scales differ only by guidance.

Sharding: shard ``i`` holds batches ``[i * batches_per_shard, (i + 1) * batches_per_shard)``; rank ``r``
of ``world_size`` produces shards ``i % world_size == r``; a shard file already present is skipped
(resume). When every shard of a scale exists, whichever rank sees it writes the merged file.
"""
from __future__ import annotations

import json
import math
from contextlib import nullcontext
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from tqdm import tqdm

from ..atomic import atomic_path, write_json_atomic
from ..config import GroupDiffConfig, apply_overrides, load_preset
from ..config_base import Section
from ..metrics.npz import SampleBatch, read_samples_npz, to_uint8_nhwc, write_samples_npz
from ..safeload import CheckpointError
from ..train.checkpoint import LATEST, CheckpointDir, find_latest
from ..weights import DEFAULT_WEIGHTS, WEIGHTS_DESCRIPTION, Weights
from .attention_score import CrossAttentionRecorder
from .generate import class_balanced_labels, generate

LOADED_WEIGHTS_ATTR = "groupdiff_weights"  # set on models by load_model_and_config: which file they hold


class SampleStageConfig(Section):
    """What to sample and where to put it (the model, sampler and guidance come from GroupDiffConfig)."""

    out_dir: str = Field("samples", min_length=1, description="Output folder (shards, merged npz, grids).")
    weights: Weights = Field(DEFAULT_WEIGHTS, description=WEIGHTS_DESCRIPTION + " Recorded in sample.json.")
    num_samples: int = Field(1000, ge=1, le=10_000_000, description="Images per cfg scale (multiple of classes x N).")
    batch_groups: int = Field(8, ge=1, le=65_536, description="Groups per generate() call (fixes the noise layout).")
    batches_per_shard: int = Field(4, ge=1, le=1_000_000, description="Batches per shard file (unit of resume).")
    cfg_scales: list[float] = Field(
        default_factory=list, description="CFG scales sampled from the same noise; empty = guidance.cfg_scale."
    )
    rank: int = Field(0, ge=0, le=65_535, description="This process's rank among world_size samplers.")
    world_size: int = Field(1, ge=1, le=65_536, description="Number of sampling processes sharing the shards.")
    grid_groups: int = Field(8, ge=0, le=1024, description="Groups shown in the PNG grid (0 = no grid).")
    attention_score: bool = Field(True, description="Record S_cross per image for group sizes N > 1.")
    attention_layers: list[int] = Field(default_factory=list, description="Blocks used for S_cross (empty = all).")
    attention_t_low: float = Field(0.0, ge=0.0, le=1.0, description="S_cross records calls with t >= this.")
    attention_t_high: float = Field(1.0, ge=0.0, le=1.0, description="S_cross records calls with t <= this.")
    init_seed: int = Field(0, ge=0, description="Seed of the random init when no checkpoint is given (tests).")
    device: str = Field("cpu", min_length=1, description="torch device for the model and the noise.")

    @field_validator("cfg_scales")
    @classmethod
    def _scales(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= s <= 50.0 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"cfg_scales {value} must be distinct values in [0, 50]")
        return value

    def scales(self, config: GroupDiffConfig) -> list[float]:
        """The CFG scales to sample: ``cfg_scales``, or the config's one ``guidance.cfg_scale`` when empty."""
        return list(self.cfg_scales) or [config.guidance.cfg_scale]


@dataclass
class SampleResult:
    """Merged outputs per cfg scale (absent while shards of other ranks are missing)."""

    npz: dict[float, Path] = field(default_factory=dict)
    grids: dict[float, Path] = field(default_factory=dict)
    shards_written: int = 0
    shards_skipped: int = 0
    s_cross: dict[float, float] = field(default_factory=dict)


def scale_name(scale: float) -> str:
    """Folder name of a cfg scale: ``cfg2``, ``cfg2.585``."""
    return f"cfg{scale:g}"


def derive_seed(seed: int, first_group: int) -> int:
    """Seed of the batch starting at ``first_group`` (independent streams via numpy SeedSequence)."""
    return int(np.random.SeedSequence([seed, first_group]).generate_state(1, dtype=np.uint32)[0])


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder from a folder, a training run directory or its ``checkpoints/latest`` pointer."""
    folder = Path(path)
    if folder.is_file() and folder.name == LATEST:  # the trainer's pointer file names the folder beside it
        return folder.parent / folder.read_text().strip()
    if CheckpointDir(folder).ema_file.is_file():  # every checkpoint folder has its EMA weights
        return folder
    latest = find_latest(folder)  # a run directory: its latest complete checkpoint
    return latest if latest is not None else folder


def load_model_and_config(
    checkpoint: str | Path | None, preset: str = "tiny-fmnist", overrides: list[str] | dict[str, Any] | None = None,
    init_seed: int = 0, weights: Weights = DEFAULT_WEIGHTS,
) -> tuple[torch.nn.Module, GroupDiffConfig]:
    """A model in eval mode and its config: from a checkpoint dir (``config.json`` + ``model.safetensors``
    for ``weights='ema'`` or ``weights.safetensors`` for ``weights='raw'``; overrides applied to the stored
    config) or, without one, a preset with random init (tests/demo). The model carries which weights it
    holds (attribute ``groupdiff_weights``: 'ema', 'raw' or 'init'), checked by :func:`run`."""
    from ..models import build_model, read_state_dict

    if weights not in CheckpointDir.WEIGHT_FILES:
        raise ValueError(f"weights={weights!r}; expected one of {sorted(CheckpointDir.WEIGHT_FILES)}")
    if checkpoint:
        ckpt = CheckpointDir(resolve_checkpoint_dir(checkpoint))
        folder, file = ckpt.path, CheckpointDir.WEIGHT_FILES[weights]
        ckpt.require(file, CheckpointDir.CONFIG, needed_for=(
            f"weights={weights!r} needs {file} + {CheckpointDir.CONFIG}; training checkpoints hold "
            f"{CheckpointDir.EMA} = EMA and {CheckpointDir.RAW} = raw"))
        data = ckpt.read_config()
        config = GroupDiffConfig.model_validate(apply_overrides(data, overrides or []))
        model = build_model(config.model)
        state, _ = read_state_dict(folder / file)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = model.state_dict()
        missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
        shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"weights file {str(folder / file)!r} does not match model {config.model.name} of its "
                f"{CheckpointDir.CONFIG}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes "
                f"{shapes[:3]}; expected {CheckpointDir.EXPECTED[file]} of that model")
        model.load_state_dict(state, strict=True)
        setattr(model, LOADED_WEIGHTS_ATTR, weights)
    else:
        config = load_preset(preset, overrides or [])
        torch.manual_seed(init_seed)
        model = build_model(config.model)
        setattr(model, LOADED_WEIGHTS_ATTR, "init")
    return model.eval(), config


def _plan(stage: SampleStageConfig, config: GroupDiffConfig) -> tuple[torch.Tensor, int, int]:
    n, classes = config.guidance.group_size, config.model.num_classes
    if stage.num_samples < classes:
        raise ValueError(
            f"num_samples={stage.num_samples} is fewer than the {classes} classes: class-balanced sampling "
            "needs at least one group per class"
        )
    labels = class_balanced_labels(stage.num_samples, classes, n)
    num_groups = stage.num_samples // n
    num_batches = math.ceil(num_groups / stage.batch_groups)
    return labels, num_groups, math.ceil(num_batches / stage.batches_per_shard)


def make_decoder(config: GroupDiffConfig, device: str):
    """Model output -> images in [-1, 1]: identity for pixel-space models (1 or 3 channels), else the VAE.

    Latent models decode with ``vae.decode(z / scaling_factor).sample`` (SiT / REPA ``sample_ddp.py``),
    the VAE built from ``data.vae`` (local weights only, ``groupdiff.data.latents.build_vae``).
    """
    if config.model.in_channels in (1, 3):
        return lambda x: x
    vae_config = config.data.vae
    if not vae_config.weights:
        raise ValueError(
            f"model.in_channels={config.model.in_channels}: a latent model needs a VAE decoder to write images; "
            "set data.vae.weights=<local SD-VAE folder or file> (--set data.vae.weights=...)"
        )
    from ..data.latents import build_vae

    vae, _ = build_vae(vae_config, device)
    if vae.config.latent_channels != config.model.in_channels:
        raise ValueError(f"VAE has {vae.config.latent_channels} latent channels, the model {config.model.in_channels}")
    dtype = next(vae.parameters()).dtype

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        parts = [vae.decode((chunk / vae_config.scaling_factor).to(dtype)).sample.float()
                 for chunk in z.split(vae_config.batch_size)]
        return torch.cat(parts)

    return decode


PLAN_FILE = "plan.json"


def plan_digest(stage: SampleStageConfig, config: GroupDiffConfig, model: torch.nn.Module) -> dict:
    """What determines the images of a shard: config, content-relevant stage fields, a weights fingerprint.

    Rank, world size, grid, output folder and the list of cfg scales (one folder each) do not change a
    shard's images and are left out, so shards can be shared between ranks and scales added later.
    """
    from ..data.digest import digest_json

    fingerprint = [[name, float(p.double().sum()), float(p.double().square().sum())]
                   for name, p in model.state_dict().items()]
    fields = stage.model_dump(include={"num_samples", "batch_groups", "batches_per_shard", "attention_score",
                                       "attention_layers", "attention_t_low", "attention_t_high", "weights"})
    config_dump = config.model_dump(exclude={"guidance": {"cfg_scale"}})
    device_type = torch.device(stage.device).type  # noise streams differ between CPU and CUDA generators
    return {"digest": digest_json([config_dump, fields, fingerprint, device_type]), "stage": fields}


def _check_plan(out: Path, plan: dict) -> None:
    path = out / PLAN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("digest") != plan["digest"]:
            raise ValueError(
                f"{out} holds shards of another sampling plan (digest {old.get('digest')} != {plan['digest']}: "
                "other weights, config, sample count or batch layout); use another --out folder"
            )
        return
    write_json_atomic(path, plan, default=None)


def _generate_shard(
    model, config: GroupDiffConfig, stage: SampleStageConfig, labels: torch.Tensor, scale: float,
    shard: int, num_groups: int, decode,
) -> SampleBatch:
    n = config.guidance.group_size
    guidance = config.guidance.model_copy(update={"cfg_scale": scale})
    shape = (config.model.in_channels, config.model.input_size, config.model.input_size)
    images, s_cross, groups = [], [], []
    first_batch = shard * stage.batches_per_shard
    for b in range(first_batch, first_batch + stage.batches_per_shard):
        g0, g1 = b * stage.batch_groups, min((b + 1) * stage.batch_groups, num_groups)
        if g0 >= num_groups:
            break
        sampler = config.sampler.model_copy(update={"seed": derive_seed(config.sampler.seed, g0)})
        y = labels[g0 * n : g1 * n]
        recorder = None
        if stage.attention_score and n > 1:
            recorder = CrossAttentionRecorder(model, g1 - g0, n, stage.attention_layers or None,
                                              stage.attention_t_low, stage.attention_t_high)
        with recorder if recorder is not None else nullcontext():
            x = generate(model, y, sampler, guidance, shape, device=stage.device)
        images.append(to_uint8_nhwc(decode(x)))
        s_cross.append(recorder.per_image().numpy() if recorder else np.full(len(y), np.nan))
        groups.append(np.repeat(np.arange(g0, g1), n))
    lab = labels[first_batch * stage.batch_groups * n :][: sum(len(g) for g in groups)].numpy()
    return SampleBatch(np.concatenate(images), lab,
                       {"s_cross": np.concatenate(s_cross), "group_index": np.concatenate(groups)})


def shard_count(stage: SampleStageConfig, config: GroupDiffConfig) -> int:
    """Number of shard files per cfg scale of this sampling plan (shards are numbered ``0 .. count - 1``)."""
    return _plan(stage, config)[2]


def run(
    stage: SampleStageConfig, config: GroupDiffConfig, model: torch.nn.Module, progress: bool = True,
    shards: list[int] | None = None, merge: bool = True,
) -> SampleResult:
    """Produce this rank's missing shards for every cfg scale, then merge the scales that are complete.

    ``shards`` names the shards to produce instead of this rank's share (an orchestrator handing out
    single shards, e.g. ``flows/fanout.py``); ``merge=False`` only writes shards (no merge, no record).
    """
    if stage.rank >= stage.world_size:
        raise ValueError(f"rank={stage.rank} must be below world_size={stage.world_size}")
    loaded = getattr(model, LOADED_WEIGHTS_ATTR, None)
    if loaded in CheckpointDir.WEIGHT_FILES and loaded != stage.weights:
        raise ValueError(
            f"the model holds the checkpoint's {loaded!r} weights but the stage says weights={stage.weights!r}; "
            f"load it with load_model_and_config(..., weights={stage.weights!r})"
        )
    labels, num_groups, num_shards = _plan(stage, config)
    decode = make_decoder(config, stage.device)
    scales = stage.scales(config)
    out = Path(stage.out_dir)
    model = model.to(stage.device).eval()
    _check_plan(out, plan_digest(stage, config, model))
    result = SampleResult()
    mine = [i for i in range(num_shards) if i % stage.world_size == stage.rank] if shards is None else list(shards)
    if any(not 0 <= i < num_shards for i in mine):
        raise ValueError(f"shards {mine} outside [0, {num_shards}): this plan has {num_shards} shards per cfg scale")
    started = time.time()
    for shard in tqdm(mine, desc=f"sample rank {stage.rank}", disable=not progress, unit="shard"):
        for scale in scales:
            path = out / "shards" / scale_name(scale) / f"shard_{shard:05d}.npz"
            if path.is_file():
                result.shards_skipped += 1
                continue
            write_samples_npz(path, _generate_shard(model, config, stage, labels, scale, shard, num_groups, decode))
            result.shards_written += 1
    if not merge:
        return result
    for scale in scales:
        merged = merge_scale(out, scale, num_shards, config.guidance.group_size, stage.grid_groups)
        if merged is not None:
            result.npz[scale], grid, result.s_cross[scale] = merged
            if grid is not None:
                result.grids[scale] = grid
    _write_record(out, stage, config, result, time.time() - started)
    return result


def merge_scale(
    out: Path, scale: float, num_shards: int, group_size: int, grid_groups: int
) -> tuple[Path, Path | None, float] | None:
    """Concatenate the shards of a scale into ``cfg<s>/samples.npz`` (+ grid); None if shards are missing."""
    folder = out / "shards" / scale_name(scale)
    paths = [folder / f"shard_{i:05d}.npz" for i in range(num_shards)]
    if not all(p.is_file() for p in paths):
        return None
    parts = [read_samples_npz(p) for p in paths]
    extras = {k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras}
    batch = SampleBatch(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]), extras)
    target = out / scale_name(scale) / "samples.npz"
    write_samples_npz(target, batch)
    grid = save_group_grid(batch.images, group_size, grid_groups, out / scale_name(scale) / "grid.png")
    s = extras.get("s_cross")
    s_mean = float(np.nanmean(s)) if s is not None and np.isfinite(s).any() else float("nan")
    return target, grid, s_mean


def save_group_grid(images: np.ndarray, group_size: int, num_groups: int, path: Path) -> Path | None:
    """PNG of the first ``num_groups`` groups, one group per row (baseline: 8 images per row)."""
    if num_groups == 0:
        return None
    count = min(len(images), num_groups * group_size)
    x = torch.from_numpy(images[:count]).permute(0, 3, 1, 2).float() / 255.0
    return _save_png(x, path, nrow=group_size if group_size > 1 else 8, padding=1)


def _save_png(x: torch.Tensor, path: Path, **grid) -> Path:
    """``torchvision.utils.save_image(x, **grid)`` to ``path`` atomically."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(x, tmp, **grid)
    return path


def save_class_grid(images: np.ndarray, labels: np.ndarray, per_class: int, path: Path,
                    min_pixels: int = 48) -> Path | None:
    """PNG with one row per class (in class order): the first ``per_class`` samples conditioned on it,
    enlarged by an integer factor (nearest neighbour, no smoothing) to at least ``min_pixels`` a side, so a
    16 px sample can be looked at. A class with fewer samples is padded with black tiles. None if nothing to show."""
    if per_class <= 0 or len(images) == 0:
        return None
    classes = np.unique(labels)
    rows = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    h = images.shape[1]
    scale = max(1, -(-min_pixels // h))
    blank = np.zeros_like(images[0])
    tiles = [images[row[j]] if j < len(row) else blank for row in rows for j in range(per_class)]
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    return _save_png(x, path, nrow=per_class, padding=2, pad_value=0.5)


def _write_record(out: Path, stage: SampleStageConfig, config: GroupDiffConfig, result: SampleResult, seconds: float) -> None:
    record = {
        "weights": stage.weights, "stage": stage.model_dump(), "config": config.model_dump(),
        "outputs": {scale_name(s): str(p) for s, p in result.npz.items()},
        "grids": {scale_name(s): str(p) for s, p in result.grids.items()},
        "s_cross": {scale_name(s): (v if math.isfinite(v) else None) for s, v in result.s_cross.items()},
        "shards_written": result.shards_written, "shards_skipped": result.shards_skipped, "seconds": seconds,
    }
    name = "sample.json" if stage.world_size == 1 else f"sample.rank{stage.rank}.json"
    write_json_atomic(out / name, record)
