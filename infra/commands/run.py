"""``groupdiff run``: the whole pipeline on the embedded default (no servers to manage).

Embed, mine, train the baseline and GroupDiff-l (tiny preset), sample, score (``fd_fmnist`` etc.), register
the better as ``champion``, then print the measured metrics table and where to look. The orchestration
lives in ``flows/`` (Prefect), imported inside the function so that ``groupdiff --help`` stays fast.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run", help="the whole pipeline on the embedded default: embed, mine, train, sample, score, register",
        description="Step and sample counts are the `pipeline` settings (flows/params.py PipelineParams); "
        "override them with --set pipeline.FIELD=VALUE (e.g. --set pipeline.train_steps=300) and the preset "
        "with --set SECTION.FIELD=VALUE.",
    )
    parser.add_argument("--preset", default="tiny-fmnist", help="config preset (default: tiny-fmnist)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline.FIELD=VALUE or SECTION.FIELD=VALUE (repeatable)")
    parser.add_argument("--out", default="outputs", help="output folder: store, MLflow, catalogue, Prefect home")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.embedded import run_embedded

    return run_embedded(args.preset, args.overrides, args.out)
