"""``groupdiff report``: a markdown table of a run's evaluations plus PNG plots and sample grids."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="markdown table + plots (metric vs N, S_cross vs metric) of evaluations")
    parser.add_argument("inputs", nargs="+", help="metrics JSON files or folders searched for metrics*.json")
    parser.add_argument("--out", required=True, help="report folder (report.md and PNGs)")
    parser.add_argument("--title", default="GroupDiff evaluation")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    path = build_report(args.inputs, args.out, args.title)
    print(f"written {path}")
    return 0
