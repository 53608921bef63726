"""Write ``reference_losses.json``: the first 50 training losses of the tiny preset for each variant
(fp32, CPU, one process, the preset's seed), which ``tests/train/test_reference_losses.py`` compares against.

Regenerate ONLY when a change is meant to alter training (a new loss, a new draw order) and say so in the
commit: ``.venv/bin/python tests/assets/make_reference_losses.py``.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

OUT = Path(__file__).with_name("reference_losses.json")
STEPS = 50
VARIANTS = ("baseline", "groupdiff-l", "groupdiff-f")
# log every step; no checkpoint before the end (writing one does not change the losses, it only costs time)
OVERRIDES = [f"train.steps={STEPS}", "train.log_every=1", f"train.checkpoint_every={STEPS}", "train.precision=fp32"]


def reference_losses(variant: str, run_dir: Path) -> list[float]:
    """The per-step losses of ``STEPS`` steps of the tiny preset trained as ``variant`` into ``run_dir``."""
    from groupdiff.config import load_preset
    from groupdiff.train.trainer import train

    config = load_preset("tiny-fmnist", [*OVERRIDES, f"train.variant={variant}"])
    train(config, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["metrics"]["loss"] for r in rows if r["kind"] == "metrics" and "loss" in r["metrics"]]
    if len(losses) != STEPS:
        raise RuntimeError(f"expected {STEPS} logged losses, got {len(losses)}")
    return losses


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        curves = {v: reference_losses(v, Path(tmp) / v) for v in VARIANTS}
    OUT.write_text(json.dumps({
        "preset": "tiny-fmnist", "overrides": OVERRIDES, "steps": STEPS, "threads": 1,
        "torch": torch.__version__, "machine": platform.machine(), "python": sys.version.split()[0],
        "losses": curves,
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
