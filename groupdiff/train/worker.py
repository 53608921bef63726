"""One training rank: ``python -m groupdiff.train.worker --config CONFIG.json --out RUN_DIR``.

This is what ``torchrun`` / the ``deepspeed`` launcher start on every rank (``groupdiff train --nproc``
does it for you). The config is the full GroupDiffConfig as JSON (``config.json`` of a run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train this rank, return an exit code (3 for a non-finite loss)."""
    parser = argparse.ArgumentParser(prog="python -m groupdiff.train.worker", description=__doc__)
    parser.add_argument("--config", required=True, help="GroupDiffConfig JSON file")
    parser.add_argument("--out", required=True, help="run directory")
    args = parser.parse_args(argv)

    from ..config import GroupDiffConfig
    from .trainer import NonFiniteLossError, train

    config = GroupDiffConfig.model_validate(json.loads(Path(args.config).read_text()))
    try:
        result = train(config, args.out)
    except NonFiniteLossError as exc:
        print(f"groupdiff train: error: {exc}", file=sys.stderr, flush=True)
        return 3
    if os.environ.get("RANK", "0") == "0":
        print(f"[groupdiff train] finished at step {result.step}; checkpoint {result.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
