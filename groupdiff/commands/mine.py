"""``groupdiff mine``: groups from embeddings (similarity) or labels (class / random) -> a group table."""
from __future__ import annotations

import argparse
import json

from ..cli import add_preset_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("mine", help="mine groups of related images into a group table (.npz)")
    add_preset_arguments(parser)
    parser.add_argument("--embeddings", default=None, help="folder written by `groupdiff embed` (needed for mode=similarity)")
    parser.add_argument("--out", required=True, help="group table file (.npz)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_preset
    from ..grouping.mine import run_mine

    config = load_preset(args.preset, args.overrides)
    table = run_mine(config, args.out, args.embeddings)
    print(json.dumps({"digest": table.digest, "stats": table.meta["stats"], "recall": table.meta.get("recall"),
                      "index": table.meta.get("index")}))
    return 0
