"""``groupdiff sample``: class-balanced groups from a checkpoint into ADM ``.npz`` files and PNG grids."""
from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_preset_arguments
    from ..train.checkpoint import CheckpointDir
    from ..weights import DEFAULT_WEIGHTS

    parser = sub.add_parser(
        "sample", help="sample class-balanced groups (baseline / GroupDiff-f / GroupDiff-l) to an ADM .npz",
        description="Sampler, guidance and group size come from the checkpoint's config.json (or --preset), "
        "overridden with --set, e.g. --set guidance.mode=groupdiff-l --set guidance.group_size=4 "
        "--set sampler.method=sde-euler --set sampler.num_steps=250. Rank/world size default to the "
        "RANK/WORLD_SIZE environment (torchrun). Rerunning resumes: finished shards are skipped.",
    )
    parser.add_argument("--checkpoint", default="", help=f"checkpoint dir with {CheckpointDir.EMA} + {CheckpointDir.CONFIG} "
                        "(omit to use --preset with random weights: tests and demos only)")
    add_preset_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-samples", type=int, required=True, help="images per cfg scale")
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[], help="several scales share the noise")
    parser.add_argument("--batch-groups", type=int, default=8, help="groups per network batch")
    parser.add_argument("--batches-per-shard", type=int, default=4, help="batches per shard file")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.add_argument("--grid-groups", type=int, default=8, help="groups in the PNG grid")
    parser.add_argument("--no-attention-score", action="store_true", help="do not record S_cross")
    parser.add_argument("--attention-layers", type=int, nargs="*", default=[], help="blocks for S_cross (default all)")
    parser.add_argument("--attention-window", type=float, nargs=2, default=[0.0, 1.0], metavar=("T_LOW", "T_HIGH"),
                        help="S_cross records network calls with t in this window (t=1 noise)")
    parser.add_argument("--weights", choices=sorted(CheckpointDir.WEIGHT_FILES), default=DEFAULT_WEIGHTS,
                        help=f"checkpoint weights to sample: ema ({CheckpointDir.EMA}) or raw ({CheckpointDir.RAW})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..sample.stage import SampleStageConfig, load_model_and_config
    from ..sample.stage import run as run_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    stage = SampleStageConfig(
        out_dir=args.out, num_samples=args.num_samples, batch_groups=args.batch_groups,
        batches_per_shard=args.batches_per_shard, cfg_scales=args.cfg_scales, rank=args.rank,
        world_size=args.world_size, grid_groups=args.grid_groups, attention_score=not args.no_attention_score,
        attention_layers=args.attention_layers, attention_t_low=args.attention_window[0],
        attention_t_high=args.attention_window[1], device=args.device, weights=args.weights,
    )
    model, config = load_model_and_config(args.checkpoint or None, args.preset, args.overrides, weights=args.weights)
    result = run_stage(stage, config, model)
    for scale, path in result.npz.items():
        s = result.s_cross.get(scale, float("nan"))
        print(f"cfg {scale:g} ({stage.weights} weights): {path}  grid {result.grids.get(scale)}  mean S_cross {s:.4f}")
    if not result.npz:
        print(f"rank {stage.rank}: wrote {result.shards_written} shards; waiting for the other ranks' shards to merge")
    return 0
