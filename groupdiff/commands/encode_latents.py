"""``groupdiff encode-latents``: SD-VAE latents of an image dataset, in restartable shards."""
from __future__ import annotations

import argparse
import json
import os

from ..cli import add_preset_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("encode-latents", help="pre-encode images with the SD-VAE (diffusers AutoencoderKL)")
    add_preset_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder of the latent shards")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)), help="this process's rank")
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)), help="number of processes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_preset
    from ..data.encode_stage import run_encode_latents

    config = load_preset(args.preset, args.overrides)
    result = run_encode_latents(config, args.out, args.rank, args.world_size)
    report = result["dataset_report"]
    print(json.dumps({"computed": result["computed"], "skipped": result["skipped"], "complete": result["complete"],
                      "digest": result["manifest"]["digest"], "dataset": report | {"skipped_files": report["skipped_files"][:20]}}))
    return 0
