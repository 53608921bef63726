"""``groupdiff train-classifier``: the small CNN on the built-in data (embedding encoder + evaluation features)."""
from __future__ import annotations

import argparse
import json

from ..cli import add_preset_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train-classifier", help="train the built-in classifier (Fashion-MNIST) used by embed and evaluation")
    add_preset_arguments(parser)
    parser.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config import load_preset
    from ..data.datasets import fmnist_dataset
    from ..encoders.classifier import train_classifier

    config = load_preset(args.preset, args.overrides)
    if config.data.dataset != "fmnist":
        raise ValueError(f"train-classifier trains on the built-in data (data.dataset='fmnist'), got {config.data.dataset!r}")
    cfg = config.embed.classifier
    torch.manual_seed(cfg.seed)
    train = fmnist_dataset("train", config.data.image_size, cfg.train_limit)
    test = fmnist_dataset("test", config.data.image_size, cfg.eval_limit)
    metrics = train_classifier(train, test, cfg, args.out)
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}))
    return 0
