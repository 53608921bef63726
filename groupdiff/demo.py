"""``groupdiff demo``: the preset's own training cut short, then sample grids (no Prefect, no MLflow).

The demo is a preset of the one trainer (:func:`groupdiff.train.trainer.train`), not a loop of its own:
the ``train`` section as configured, with ``train.steps = demo.steps`` and one checkpoint at the end, in
one process on the built-in data. Then one class-balanced grid per inference mode (baseline and
GroupDiff-l) is sampled from the final EMA weights.

Outputs go to one folder: the run's ``config.json``, ``metrics.jsonl`` and ``checkpoints/``, plus
``model.safetensors`` (the final EMA weights), ``samples_baseline.png``, ``samples_groupdiff-l.png`` and
``loss.png``.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_path
from .config import GroupDiffConfig
from .models import count_parameters
from .sample import class_balanced_labels, generate
from .tracking import NullTracker
from .train.checkpoint import CheckpointDir

GRID_PER_CLASS = 8  # samples per class (row) in a grid


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and what it measured."""

    out_dir: Path
    steps: int
    final_loss: float
    seconds: float
    grids: list[Path]


class _Losses(NullTracker):
    """Keeps the logged losses of this run (``metrics.jsonl`` may also hold earlier runs in the same folder)."""

    def __init__(self):
        self.steps: list[int] = []
        self.losses: list[float] = []

    def log_metrics(self, metrics, step=None):
        if "loss" in metrics and step is not None:
            self.steps.append(step)
            self.losses.append(float(metrics["loss"]))


def demo_config(config: GroupDiffConfig) -> GroupDiffConfig:
    """The preset's training cut to ``demo.steps``: a fresh run with one checkpoint, at the end."""
    steps = config.demo.steps
    train = config.train.model_copy(update={"steps": steps, "checkpoint_every": steps, "keep_last": 1,
                                            "resume": "off"})
    return config.model_copy(update={"train": train})


def run_demo(config: GroupDiffConfig, out_dir: Path) -> DemoResult:
    """Train ``demo_config(config)`` into ``out_dir`` with the one trainer, then sample the grids."""
    from .sample.stage import load_model_and_config
    from .train.tracker import TeeTracker, default_tracker
    from .train.trainer import train

    config = demo_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    losses = _Losses()
    tracker = TeeTracker(default_tracker(out_dir), losses)
    try:
        start = time.perf_counter()
        result = train(config, out_dir, tracker=tracker)
        seconds = time.perf_counter() - start
        model, _ = load_model_and_config(result.checkpoint, weights="ema")
        with atomic_path(out_dir / CheckpointDir.EMA) as tmp:
            shutil.copyfile(CheckpointDir(result.checkpoint).ema_file, tmp)
        grids = sample_grids(config, model, out_dir)
        for grid in grids:
            tracker.log_artifact(grid)
        plot_loss(losses.steps, losses.losses, config.train.log_every, out_dir / "loss.png")
    finally:
        tracker.close()
    print(f"SiT {count_parameters(model) / 1e6:.2f}M params, {result.step} steps in {seconds:.0f}s")
    return DemoResult(out_dir, result.step, losses.losses[-1], seconds, grids)


def sample_grids(config: GroupDiffConfig, model: torch.nn.Module, out_dir: Path) -> list[Path]:
    """One grid per inference mode: baseline (N=1) and GroupDiff-l with groups of 4 (rows = classes)."""
    from torchvision.utils import save_image

    paths = []
    c, s = config.model.in_channels, config.model.input_size
    for mode, group_size in (("baseline", 1), ("groupdiff-l", min(4, config.model.max_group_size))):
        guidance = config.guidance.model_copy(update={"mode": mode, "group_size": group_size})
        labels = class_balanced_labels(config.model.num_classes * GRID_PER_CLASS, config.model.num_classes, group_size)
        order = labels.argsort(stable=True)  # rows = classes in the grid
        samples = generate(model, labels, config.sampler, guidance, (c, s, s), progress=False)
        path = out_dir / f"samples_{mode}.png"
        with atomic_path(path) as tmp:
            save_image(samples[order].clamp(-1, 1), tmp, nrow=GRID_PER_CLASS, normalize=True, value_range=(-1, 1))
        paths.append(path)
    return paths


def plot_loss(steps: list[int], losses: list[float], every: int, path: Path) -> None:
    """The training loss as logged: one point per ``every`` steps, each the mean over those steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="." if len(losses) < 50 else None, label=f"loss (mean of {every} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("velocity MSE")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
