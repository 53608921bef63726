"""The library's command line: one subcommand per library stage (``python -m groupdiff.cli``).

The ``groupdiff`` console script is :mod:`infra.cli`, which adds the platform commands (``run``, ``up``,
``down``, ``status``, ``check``) on top of these; this module never imports them (the library sits below the
orchestration and service layers). Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
Modules are imported lazily so ``groupdiff --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "groupdiff.commands.models",
    "groupdiff.commands.train",
    "groupdiff.commands.demo",
    "groupdiff.commands.sample",
    "groupdiff.commands.score",
    "groupdiff.commands.report",
    "groupdiff.commands.embed",
    "groupdiff.commands.mine",
    "groupdiff.commands.train_classifier",
    "groupdiff.commands.encode_latents",
]


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with the subcommands of ``modules`` (default: the library's ``COMMAND_MODULES``)."""
    parser = argparse.ArgumentParser(prog="groupdiff", description="Group Diffusion: train, sample and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES if modules is None else modules:
        importlib.import_module(name).register(sub)
    return parser


def add_preset_arguments(parser: argparse.ArgumentParser, default: str = "tiny-fmnist") -> None:
    """Common ``--preset NAME`` and ``--set section.field=value`` options."""
    parser.add_argument("--preset", default=default, help=f"preset name or YAML path (default: {default})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.depth=6 (repeatable)",
    )


def main(argv: list[str] | None = None, modules: list[str] | None = None) -> int:
    """Parse ``argv`` against ``modules``' subcommands and run the chosen one; a bad value is one error line
    (exit 2), not a traceback."""
    args = build_parser(modules).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"groupdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
