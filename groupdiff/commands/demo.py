"""``groupdiff demo``: the preset's training cut to ``demo.steps`` in one process, plus sample grids."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import add_preset_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="train the tiny preset briefly on the built-in data and sample grids")
    add_preset_arguments(parser)
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_preset
    from ..demo import run_demo

    config = load_preset(args.preset, args.overrides)
    result = run_demo(config, Path(args.out))
    out = result.out_dir.resolve()
    print(f"\nDemo finished: {result.steps} steps in {result.seconds:.0f}s, final loss {result.final_loss:.4f}")
    print(f"Outputs in {out}:")
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "loss.png", *(g.name for g in result.grids)):
        print(f"  {out / name}")
    return 0
