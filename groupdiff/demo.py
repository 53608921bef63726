"""The short demo behind ``make run`` until the full pipeline lands: train the tiny preset briefly on the
built-in data in one process, then sample a class-balanced grid (baseline and GroupDiff-l inference).

Everything comes from the config (``demo``, ``model``, ``transport``, ``sampler``, ``guidance``,
``data`` sections); outputs go to one folder: ``model.safetensors``, ``config.json``, ``metrics.jsonl``,
``samples_baseline.png``, ``samples_groupdiff-l.png`` and ``loss.png``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchvision.utils import save_image
from tqdm import tqdm

from .config import GroupDiffConfig
from .data.fmnist import load_fmnist
from .models import build_model, count_parameters
from .sample import class_balanced_labels, generate
from .tracking import JsonlTracker
from .transport import training_losses


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and what it measured."""

    out_dir: Path
    steps: int
    final_loss: float
    seconds: float
    grids: list[Path]


def train_demo(config: GroupDiffConfig, out_dir: Path, progress: bool = True) -> DemoResult:
    """Train ``config.demo.steps`` AdamW steps (plain PyTorch, one process) and sample image grids."""
    demo = config.demo
    out_dir.mkdir(parents=True, exist_ok=True)
    if demo.num_threads:
        torch.set_num_threads(demo.num_threads)
    torch.manual_seed(demo.seed)
    images, labels = load_fmnist(config.data.split, config.data.image_size, config.data.limit)
    model = build_model(config.model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=demo.lr, weight_decay=demo.weight_decay
    )
    generator = torch.Generator().manual_seed(demo.seed)
    tracker = JsonlTracker(out_dir / "metrics.jsonl")
    tracker.log_params(config.model_dump())
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(demo.steps), desc="demo train", disable=not progress)
    for step in bar:
        idx = torch.randint(0, images.shape[0], (demo.batch_size,), generator=generator)
        loss = training_losses(model, images[idx], labels[idx], 1, config.transport, generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if demo.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), demo.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == demo.steps - 1:
            tracker.log_metrics({"loss": losses[-1]}, step=step)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    seconds = time.perf_counter() - start

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(config.model_dump(), indent=2))
    grids = sample_grids(config, model, out_dir)
    for grid in grids:
        tracker.log_artifact(grid)
    plot_loss(losses, out_dir / "loss.png")
    tracker.close()
    window = losses[-20:]
    print(f"SiT {count_parameters(model) / 1e6:.2f}M params, {demo.steps} steps in {seconds:.0f}s")
    return DemoResult(out_dir, demo.steps, sum(window) / len(window), seconds, grids)


def sample_grids(config: GroupDiffConfig, model: torch.nn.Module, out_dir: Path) -> list[Path]:
    """One grid per inference mode: baseline (N=1) and GroupDiff-l with groups of 4 (rows = classes)."""
    paths = []
    c, s = config.model.in_channels, config.model.input_size
    per_class = 8
    for mode, group_size in (("baseline", 1), ("groupdiff-l", min(4, config.model.max_group_size))):
        guidance = config.guidance.model_copy(update={"mode": mode, "group_size": group_size})
        labels = class_balanced_labels(config.model.num_classes * per_class, config.model.num_classes, group_size)
        order = labels.argsort(stable=True)  # rows = classes in the grid
        samples = generate(model, labels, config.sampler, guidance, (c, s, s), progress=False)
        path = out_dir / f"samples_{mode}.png"
        save_image(samples[order].clamp(-1, 1), path, nrow=per_class, normalize=True, value_range=(-1, 1))
        paths.append(path)
    return paths


def plot_loss(losses: list[float], path: Path) -> None:
    """Training loss curve (raw and a 20-step moving average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, alpha=0.35, label="loss")
    k = 20
    if len(losses) >= k:
        smooth = [sum(losses[i - k : i]) / k for i in range(k, len(losses) + 1)]
        ax.plot(range(k - 1, len(losses)), smooth, label=f"{k}-step mean")
    ax.set_xlabel("step")
    ax.set_ylabel("velocity MSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
