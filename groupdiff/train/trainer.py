"""The training loop on DeepSpeed: ``train(config, run_dir)`` runs one rank (DESIGN 1.3, 2.5).

Run it as one plain process, or once per rank under ``torchrun`` / the ``deepspeed`` launcher
(``python -m groupdiff.train_worker``). Per optimizer step every rank takes its contiguous share of the
planned global batch (whole groups), splits it into micro batches, and DeepSpeed averages gradients,
clips and steps. Then the EMA follows, metrics go to the tracker (rank 0), the group-benefit probe and
checkpoints run every K steps. Label dropout is drawn by the trainer per group from the step's
generator (see :mod:`groupdiff.train.data`), so the model's own dropout is switched off.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from ..safeload import CheckpointError, load_tensor_file
from ..tracking import NullTracker, Tracker
from ..transport.losses import training_losses
from .checkpoint import TAG, CheckpointDir, check_resumable, find_latest, load_rng, resolve_resume, save_checkpoint
from .data import EpochPlans, as_source, check_dataset, class_neighbours, draw_step, load_dataset, load_group_table
from .ds_config import batch_layout, deepspeed_config, use_bf16
from .loader import step_loader
from .launch import device_type, ensure_rendezvous_env, init_distributed
from .optim import EMA, build_optimizer, ema_decay_at, global_grad_norm, param_groups, warmup_factor
from .probe import build_probe_set, run_probe
from .tracker import default_tracker
from .universal import can_resume_universal, prepare_universal, universal_dir

if TYPE_CHECKING:  # annotations only: the composed config imports this package's section
    from ..config import GroupDiffConfig


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving over the last good checkpoint."""


@dataclass
class TrainResult:
    """What a finished run left behind."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    last_loss: float


def validate(config: GroupDiffConfig, world_size: int) -> None:
    """Every check that needs no data or compute: batch arithmetic, group size, paths."""
    t = config.train
    batch_layout(t, world_size)
    if t.effective_group_size > config.model.max_group_size:
        raise ValueError(f"train.group_size={t.group_size} exceeds model.max_group_size={config.model.max_group_size}")
    needs_null = t.variant == "groupdiff-l" or (t.probe_every > 0 and t.variant != "baseline")
    if needs_null and config.model.class_dropout_prob == 0:
        raise ValueError(
            f"train.variant={t.variant!r} (unconditional group batches or the probe) needs the null label, "
            "which the model only has with model.class_dropout_prob > 0"
        )
    if t.pretrained_path and not Path(t.pretrained_path).exists():
        raise FileNotFoundError(f"train.init_from={t.init_from!r}: checkpoint {t.pretrained_path!r} does not exist")
    if t.groups_path and not Path(t.groups_path).exists():
        raise FileNotFoundError(f"train.groups_path={t.groups_path!r} does not exist")


def _initial_weights(model, config: GroupDiffConfig, resume: Path | None, same_world: bool) -> dict[str, Any]:
    """Pretrained init (fresh runs) or consolidated weights (resume on another world size); returns a report."""
    from ..models import load_official_state_dict, read_state_dict

    if resume is not None:
        if same_world:
            return {"source": str(resume), "mode": "resume"}
        raw_file = CheckpointDir(resume).raw_file
        model.load_state_dict(load_tensor_file(raw_file, CheckpointDir.EXPECTED[CheckpointDir.RAW]), strict=True)
        return {"source": str(raw_file), "mode": "resume-consolidated"}
    if config.train.pretrained_path:
        state, entry = read_state_dict(config.train.pretrained_path)
        try:
            report = load_official_state_dict(model, state, source_entry=entry)
        except (KeyError, ValueError) as exc:  # a key or shape of another model, named in the message
            raise CheckpointError(f"train.init_from={config.train.init_from!r}: {exc.args[0]}; expected a "
                                  f"checkpoint of model {config.model.name} (the run's model section)") from None
        return {"source": config.train.pretrained_path, "mode": "pretrained", "summary": report.summary(),
                "loaded": len(report.loaded), "newly_initialised": report.newly_initialised}
    return {"source": "scratch", "mode": "scratch"}


def _grouping(config: GroupDiffConfig, labels: torch.Tensor) -> dict[str, np.ndarray] | None:
    """Plan arguments: the mined group table, or same-class neighbours drawn from the labels."""
    t = config.train
    if t.variant == "baseline":
        return None
    if t.groups_path:
        return load_group_table(t.groups_path, labels)
    return {"neighbours": class_neighbours(labels.numpy(), t.class_neighbours, t.seed)}


def _all_mean(value: torch.Tensor, world: int) -> float:
    value = value.detach().float().cpu().reshape(1).clone()
    if world > 1:
        # gloo and NCCL both reduce; move to the backend's device only for NCCL
        backend = dist.get_backend()
        if backend == "nccl":
            value = value.cuda()
        dist.all_reduce(value)
    return float(value.item()) / world


@dataclass
class _Resume:
    """Where a run continues from: the checkpoint (or None), its saved state, and how it is restored."""

    path: Path | None = None
    saved: dict[str, Any] | None = None
    same_world: bool = False  # DeepSpeed state of the same world size: everything carries over
    universal: bool = False  # another world size through DeepSpeed's universal checkpoint


def _resume_of(config: GroupDiffConfig, run_dir: Path, world: int) -> _Resume:
    """The checkpoint ``train.resume`` names (checked against ``config``) and how it can be restored."""
    path = resolve_resume(config.train.resume, run_dir)
    if path is None:
        return _Resume()
    saved = check_resumable(path, config)
    same_world = saved["world_size"] == world
    return _Resume(path, saved, same_world, not same_world and can_resume_universal(path, config))


def train(config: GroupDiffConfig, run_dir: str | Path, tracker: Tracker | None = None,
          data: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainResult:
    """Train (or resume) one rank of the run described by ``config`` into ``run_dir``.

    ``data`` replaces the configured dataset with (images, labels) tensors; ``tracker`` (rank 0 only)
    replaces the default (:func:`default_tracker`). Raises :class:`NonFiniteLossError` on a NaN/inf loss.
    """
    t = config.train
    run_dir = Path(run_dir)
    rank, world, local_rank = ensure_rendezvous_env()
    dev_type = device_type()
    validate(config, world)
    layout = batch_layout(t, world)
    resume = _resume_of(config, run_dir, world)

    images, labels = (as_source(data[0]), data[1]) if data is not None else load_dataset(config)
    check_dataset(config, images, labels)
    grouping = _grouping(config, labels)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)

    from ..models import build_model

    torch.manual_seed(t.seed)
    model = build_model(config.model)
    model.y_embedder.dropout_prob = 0.0  # the trainer draws label dropout per group (data.draw_step)
    init_report = _initial_weights(model, config, resume.path, resume.same_world or resume.universal)

    init_distributed(dev_type, local_rank)  # selects DeepSpeed's accelerator before its first import
    bf16 = use_bf16(t, dev_type)
    engine = _engine(model, config, resume, rank, world, dev_type, init_report)
    ema = EMA(engine.module, lambda s: ema_decay_at(s, t))
    state = _restore(engine, ema, resume, rank, world, init_report)
    own_tracker = tracker is None
    tracker = _rank_tracker(config, run_dir, tracker, rank, world, layout, init_report)
    try:
        return _loop(config, run_dir, engine, ema, state, layout, images, labels, grouping, tracker,
                     rank, world, engine.device, bf16)
    finally:
        if own_tracker:
            tracker.close()


def _engine(model, config: GroupDiffConfig, resume: _Resume, rank: int, world: int, dev_type: str,
            init_report: dict[str, Any]):
    """The DeepSpeed engine around ``model`` (AdamW, or DeepSpeed's own with optimizer offload); set to load
    a universal checkpoint when resuming on another world size (noted in ``init_report``)."""
    import deepspeed

    t = config.train
    ds_cfg = deepspeed_config(t, world, dev_type)
    if resume.universal:  # another world size: DeepSpeed's universal checkpoint (weights + AdamW moments, any world)
        load_dir = prepare_universal(resume.path, TAG, rank)
        ds_cfg["checkpoint"] = {"load_universal": True}
        init_report.update(mode="resume-universal", note=(
            f"resuming {resume.path} (saved on world_size={resume.saved['world_size']}) on world_size={world} "
            f"through DeepSpeed's universal checkpoint ({load_dir}): weights, AdamW moments, step and epoch-plan "
            "position carry over; per-rank torch RNG states do not (training draws are keyed by step)"))
    if t.offload_optimizer:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, t.weight_decay), config=ds_cfg)
    else:
        engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, t, dev_type), config=ds_cfg)
    return engine


def _restore(engine, ema: EMA, resume: _Resume, rank: int, world: int, init_report: dict[str, Any]) -> dict[str, Any]:
    """Load the optimizer/RNG/EMA state of the checkpoint being resumed; returns the loop's starting state."""
    if resume.path is None:
        return {"step": 0, "epoch": 0, "index": 0, "counters": {}}
    if resume.same_world or resume.universal:
        folder = CheckpointDir(resume.path).ds_dir if resume.same_world else universal_dir(resume.path)
        loaded, _ = engine.load_checkpoint(str(folder), tag=TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"DeepSpeed checkpoint missing under {folder} (tag {TAG!r})")
        if resume.same_world:
            load_rng(resume.path, rank)
    else:
        init_report["note"] = (
            f"resuming {resume.path} (saved on world_size={resume.saved['world_size']}) on world_size={world} "
            "through the consolidated weights: weights, EMA, step and epoch-plan position carry over; "
            "the optimizer state (AdamW moments) and per-rank RNG states do NOT and restart fresh "
            "(training draws are keyed by step, so data order and noise are unaffected)"
        )
    ema.load_state_dict(load_tensor_file(CheckpointDir(resume.path).ema_file, CheckpointDir.EXPECTED[CheckpointDir.EMA]))
    return {k: resume.saved[k] for k in ("step", "epoch", "index", "counters")}


def _rank_tracker(config: GroupDiffConfig, run_dir: Path, tracker: Tracker | None, rank: int, world: int,
                  layout, init_report: dict[str, Any]) -> Tracker:
    """Rank 0: writes the run's config and init report, logs the params and returns the tracker (the given
    one or :func:`default_tracker`); other ranks track nothing."""
    if rank != 0:
        return NullTracker()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    (run_dir / "init_report.json").write_text(json.dumps(init_report, indent=2))
    tracker = tracker or default_tracker(run_dir)
    tracker.log_params({**config.model_dump(), "init": init_report, "world_size": world,
                        "accumulation": layout.accumulation, "micro_batch_images": layout.micro_images})
    for line in (init_report.get("summary"), init_report.get("note")):
        if line:
            print(f"[groupdiff train] {line}", flush=True)
    return tracker


@dataclass
class _StepOutcome:
    loss: float
    grad_norm: float
    lr: float
    ema_decay: float


def _step(config: GroupDiffConfig, engine, ema: EMA, forward, batch, sb, layout, step: int, world: int, device,
          bf16: bool, warm, run_dir: Path, where: str) -> _StepOutcome:
    """One optimizer step on this rank's share ``sb`` of ``batch``: learning rate, micro batches with
    gradient accumulation, the non-finite check (before any weight changes), the step and the EMA."""
    t = config.train
    model = engine.module
    lr = t.lr * warm(step)
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), dtype=torch.float32)
    for i in range(layout.accumulation):
        mb = sb.micro(i, layout.micro_images)
        ids = None if mb.sample_ids is None else mb.sample_ids.to(device)
        losses = training_losses(forward, mb.x0.to(device), mb.y.to(device), mb.group_size, config.transport,
                                 t=mb.t.to(device), noise=mb.noise.to(device), sample_ids=ids)
        loss = losses.mean()
        engine.backward(loss)
        loss_sum += loss.detach().float().cpu()
        if i < layout.accumulation - 1:
            engine.step()
    mean_loss = _all_mean(loss_sum / layout.accumulation, world)
    if not math.isfinite(mean_loss):
        latest = find_latest(run_dir)
        raise NonFiniteLossError(
            f"non-finite loss {mean_loss} at step {step + 1} ({where}, "
            f"{'group' if batch.group_size > 1 else 'direct'} batch); stopped without saving. "
            f"Last good checkpoint: {latest if latest else 'none'}"
        )
    manual_norm = t.zero_stage == 0 and not bf16
    grad_norm = global_grad_norm(model.parameters()) if manual_norm else None
    engine.step()
    if grad_norm is None:
        value = engine.get_global_grad_norm()
        grad_norm = float(value) if value is not None else float("nan")
    return _StepOutcome(mean_loss, grad_norm, lr, ema.update(model, step))


class _Window:
    """The metrics of the steps since the last log line: summed loss, steps, busy seconds."""

    def __init__(self):
        self.loss, self.steps, self.busy = 0.0, 0, 0.0

    def add(self, loss: float, busy_s: float) -> None:
        self.loss, self.steps, self.busy = self.loss + loss, self.steps + 1, self.busy + busy_s

    def metrics(self, images_per_step: int) -> dict[str, float]:
        return {"loss": self.loss / self.steps, "images_per_s": self.steps * images_per_step / max(self.busy, 1e-9)}


def _loop(config, run_dir, engine, ema, state, layout, images, labels, grouping, tracker, rank, world,
          device, bf16) -> TrainResult:
    from tqdm import tqdm

    t = config.train
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = engine.module

    def forward(x, t_, y, group_size=1, sample_ids=None):
        return engine(x.to(dtype), t_, y, group_size=group_size, sample_ids=sample_ids)

    plans = EpochPlans(config, len(labels), grouping)
    probe = build_probe_set(config, images, grouping, model) if t.probe_every and t.variant != "baseline" else None
    warm = warmup_factor(t.warmup_steps)
    counters = {"images": 0, "group_batches": 0, "direct_batches": 0, "unconditional_images": 0, **state["counters"]}
    step, epoch, index = state["step"], state["epoch"], state["index"]
    last_saved = step if state["step"] else None
    window = _Window()
    last_loss = float("nan")
    record = _index_record(run_dir, rank) if t.record_indices else None
    bar = tqdm(total=t.steps, initial=step, disable=rank != 0, desc=f"train {t.variant}", dynamic_ncols=True)
    checkpoint = find_latest(run_dir) if last_saved is not None else None
    engine.train()
    loader = step_loader(images, plans, epoch, index, max(0, t.steps - step), rank, world, config.data.num_workers,
                         config.data.prefetch_factor)
    try:
        for batch, epoch, index, x0 in loader:
            started = time.perf_counter()
            sb = draw_step(batch, images, labels, config, step, rank, world, model, x0=x0)
            if record is not None:
                record.write(json.dumps({"step": step, "indices": sb.indices.tolist()}) + "\n")
            out = _step(config, engine, ema, forward, batch, sb, layout, step, world, device, bf16, warm, run_dir,
                        f"epoch {epoch}, batch {index}")
            window.add(out.loss, time.perf_counter() - started)
            step, index = step + 1, index + 1
            _count(counters, batch)
            last_loss = out.loss
            bar.update(1)
            if step % t.log_every == 0 or step == t.steps:
                metrics = {**window.metrics(t.global_batch_images), **_step_metrics(out, epoch, ema, model, counters)}
                tracker.log_metrics(metrics, step=step)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                window = _Window()
            if probe is not None and step % t.probe_every == 0:
                tracker.log_metrics(_probe(engine, forward, probe, config, device), step=step)
            if step % t.checkpoint_every == 0 or step == t.steps:
                checkpoint = save_checkpoint(engine, ema, config, {
                    "step": step, "epoch": epoch, "index": index, "world_size": world, "counters": counters,
                    "variant": t.variant}, run_dir, rank, t.keep_last)
                last_saved = step
    finally:
        bar.close()
        if record is not None:
            record.close()
    if last_saved != step:  # a resumed run that had nothing left to do still leaves its checkpoint
        checkpoint = find_latest(run_dir)
    return TrainResult(run_dir, step, checkpoint, last_loss)


def _probe(engine, forward, probe, config: GroupDiffConfig, device) -> dict[str, float]:
    """The group-benefit probe's metrics, measured in eval mode (training mode restored after)."""
    engine.eval()
    try:
        return run_probe(forward, probe, config, engine.module.null_label, device)
    finally:
        engine.train()


def _step_metrics(out: _StepOutcome, epoch: int, ema: EMA, model, counters: dict[str, int]) -> dict[str, float]:
    """The last step's gradient norm, learning rate and EMA state, the epoch and the running counts."""
    return {"grad_norm": out.grad_norm, "lr": out.lr, "epoch": epoch, "ema_decay": out.ema_decay,
            "ema_raw_rel_diff": ema.relative_difference(model), **{f"count/{k}": v for k, v in counters.items()}}


def _index_record(run_dir: Path, rank: int):
    """The file (appended to) where this rank records the dataset indices of every step (``train.record_indices``)."""
    (run_dir / "indices").mkdir(parents=True, exist_ok=True)
    return (run_dir / "indices" / f"rank{rank}.jsonl").open("a")


def _count(counters: dict[str, int], batch) -> None:
    """Images, group/direct batches and unconditional images seen (kept in checkpoints for exact resume)."""
    counters["images"] += len(batch.indices)
    counters["group_batches" if batch.group_size > 1 else "direct_batches"] += 1
    counters["unconditional_images"] += len(batch.indices) if batch.unconditional else 0
