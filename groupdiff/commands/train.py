"""``groupdiff train``: train a SiT (baseline / GroupDiff-l / GroupDiff-f) on DeepSpeed.

One process runs in place (no launcher needed); ``--nproc N`` starts N local ranks through
``torch.distributed.run``; ``--hostfile F`` starts DeepSpeed's multi-node launcher.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import add_preset_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train on DeepSpeed (scratch, pretrained init or resume)")
    add_preset_arguments(parser)
    parser.add_argument("--out", default="runs/train", help="run directory (checkpoints, metrics.jsonl)")
    parser.add_argument("--nproc", type=int, default=1, help="local ranks (1 = this process, no launcher)")
    parser.add_argument("--hostfile", default=None, help="DeepSpeed hostfile for a multi-node launch")
    parser.add_argument("--variant", choices=["baseline", "groupdiff-l", "groupdiff-f"], help="= --set train.variant=")
    parser.add_argument("--group-size", type=int, help="= --set train.group_size=")
    parser.add_argument("--steps", type=int, help="= --set train.steps=")
    parser.add_argument("--resume", help="off | auto | checkpoint path (= --set train.resume=)")
    parser.add_argument("--init-from", help="scratch | pretrained:<path> (= --set train.init_from=)")
    parser.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    shortcuts = {"variant": "train.variant", "group_size": "train.group_size", "steps": "train.steps",
                 "resume": "train.resume", "init_from": "train.init_from"}
    extra = [f"{key}={getattr(args, name)}" for name, key in shortcuts.items() if getattr(args, name) is not None]
    return list(args.overrides) + extra


def run(args: argparse.Namespace) -> int:
    from ..config import load_preset
    from ..train.trainer import validate

    config = load_preset(args.preset, _overrides(args))
    if args.nproc < 1:
        raise ValueError(f"--nproc={args.nproc}; expected >= 1")
    out = Path(args.out)
    if args.nproc == 1 and not args.hostfile:
        from ..train_worker import run_rank

        validate(config, 1)
        return run_rank(config, out)
    from ..train.launch import launch, write_launch_config

    if not args.hostfile:
        validate(config, args.nproc)  # the world size is known only for local launches; every rank re-checks
    return launch(write_launch_config(config, out), out, args.nproc, args.hostfile)
