"""One training rank: ``python -m groupdiff.train_worker --config CONFIG.json --out RUN_DIR``.

The one training entry point: what ``groupdiff train --nproc`` / ``--hostfile`` and the training flow start
(see :func:`groupdiff.train.launch.launcher_command`), once per rank under ``torch.distributed.run`` or the
``deepspeed`` launcher, or alone for one rank. The config is the full GroupDiffConfig as JSON.

* Tracking: rank 0 logs to ``RUN_DIR/metrics.jsonl`` and to the tracker ``$GROUPDIFF_TRACKER=module:factory``
  names (:func:`groupdiff.train.tracker.default_tracker`). The plug is an import-path string in the
  environment because the environment reaches every rank through any launcher without changing the launch
  command, and the library only resolves the string: it never imports who provides it (the flows set
  ``registry.mlflow_tracker:run_tracker`` to log to their MLflow run).
* It sits beside ``groupdiff.train``, not in it: it composes the whole config (``groupdiff.config``), which
  imports ``groupdiff.train``'s own section, so from inside the package it would close an import circle.
* ``$GROUPDIFF_PARENT_PID``: the rank kills its process group once that process is gone (the flow that
  started it was killed without a chance to clean up), so no training outlives its caller.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import GroupDiffConfig
from .procs import PARENT_PID_ENV, watch_parent


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train this rank, return an exit code (3 for a non-finite loss)."""
    parser = argparse.ArgumentParser(prog="python -m groupdiff.train_worker", description=__doc__)
    parser.add_argument("--config", required=True, help="GroupDiffConfig JSON file")
    parser.add_argument("--out", required=True, help="run directory")
    args = parser.parse_args(argv)
    if os.environ.get(PARENT_PID_ENV):
        watch_parent(int(os.environ[PARENT_PID_ENV]))

    return run_rank(GroupDiffConfig.model_validate(json.loads(Path(args.config).read_text())), args.out)


def run_rank(config: GroupDiffConfig, out: str | Path) -> int:
    """Train this rank of ``config`` into ``out``; 0, or 3 for a non-finite loss (its message on stderr).
    Also what ``groupdiff train`` runs in place for one process."""
    from .train.trainer import NonFiniteLossError, train

    try:
        result = train(config, out)
    except NonFiniteLossError as exc:
        print(f"groupdiff train: error: {exc}", file=sys.stderr, flush=True)
        return 3
    if os.environ.get("RANK", "0") == "0":
        print(f"[groupdiff train] finished at step {result.step}; checkpoint {result.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
