"""The ``groupdiff`` console script: the library's stage commands (:mod:`groupdiff.cli`) plus the platform
commands that sit above it: ``run`` (the whole pipeline, :mod:`flows`), ``up`` / ``down`` / ``status`` (the
local service stack, :mod:`infra.stack`) and ``check`` (:mod:`registry.consistency`).

The arrows point down: this module imports the library's CLI, never the reverse.
"""
from __future__ import annotations

import os
import sys

from groupdiff.cli import COMMAND_MODULES as LIBRARY_COMMANDS
from groupdiff.cli import main as dispatch
from groupdiff.data.remote import STORE_FACTORY_ENV

PLATFORM_COMMANDS = ["infra.commands.stack", "infra.commands.run", "infra.commands.ingest"]
# s3:// dataset roots (data.root) are opened through the platform's object store (groupdiff.data.remote)
STORE_FACTORY = (STORE_FACTORY_ENV, "registry.stores:open_store")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``groupdiff`` console script (library and platform subcommands)."""
    os.environ.setdefault(*STORE_FACTORY)
    return dispatch(argv, LIBRARY_COMMANDS + PLATFORM_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
