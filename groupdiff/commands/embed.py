"""``groupdiff embed``: L2-normalised image embeddings in restartable shards (one process per rank)."""
from __future__ import annotations

import argparse
import json
import os

from ..cli import add_preset_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("embed", help="compute image embeddings for group mining")
    add_preset_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder of the embedding shards")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)), help="this process's rank (default $RANK or 0)")
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                        help="number of processes writing shards (default $WORLD_SIZE or 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_preset
    from ..grouping.embed import run_embed

    config = load_preset(args.preset, args.overrides)
    result = run_embed(config, args.out, args.rank, args.world_size)
    summary = {k: result[k] for k in ("computed", "skipped", "complete")}
    summary.update(digest=result["manifest"]["digest"], dataset=result["dataset_report"] | {"skipped_files": result["dataset_report"]["skipped_files"][:20]})
    print(json.dumps(summary))
    return 0
