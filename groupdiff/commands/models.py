"""``groupdiff models``: the official SiT sizes and their parameter counts."""
from __future__ import annotations

import argparse

import torch


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="print each SiT model with its parameter count")
    parser.add_argument("--max-group-size", type=int, default=16, help="rows of the sample-index table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..models import SiT_models, count_parameters, flops_per_image

    table = Table(title="SiT models (ImageNet 256: 32x32x4 latents, 1000 classes, learn_sigma)")
    for col in ("name", "depth", "hidden", "heads", "patch", "tokens", "params (M)", "GFLOPs/img N=1"):
        table.add_column(col, justify="right" if col != "name" else "left")
    with torch.device("meta"):
        for name, constructor in SiT_models.items():
            model = constructor(max_group_size=args.max_group_size)
            blocks = model.blocks
            table.add_row(
                name, str(len(blocks)), str(model.pos_embed.shape[-1]), str(model.num_heads),
                str(model.patch_size), str(model.x_embedder.num_patches),
                f"{count_parameters(model) / 1e6:.1f}", f"{flops_per_image(model) / 1e9:.1f}",
            )
    Console().print(table)
    return 0
