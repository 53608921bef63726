"""Training subprocess entry: ``python -m flows.train_worker --config CONFIG.json --out RUN_DIR``.

Like ``groupdiff.train.worker`` but rank 0 logs to the MLflow run the flow opened (``$MLFLOW_RUN_ID`` at
``$MLFLOW_TRACKING_URI``) through :func:`registry.mlflow_tracker.make_tracker`, and to ``RUN_DIR/metrics.jsonl``
(which the flow follows to print progress); other ranks log nothing.
A watchdog thread ends the whole process group when the flow process that started it goes away
(killed without a chance to clean up), so no training process outlives its flow run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

WATCH_INTERVAL_S = 1.0
ENV_PARENT = "GROUPDIFF_FLOW_PID"


def _watch_parent(parent: int) -> None:
    """Kill this process group once ``parent`` is gone (its pid no longer exists or was reused by a zombie)."""
    def loop() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Train one rank with an MLflow tracker on rank 0; exit 3 on a non-finite loss."""
    parser = argparse.ArgumentParser(prog="python -m flows.train_worker", description=__doc__)
    parser.add_argument("--config", required=True, help="GroupDiffConfig JSON file")
    parser.add_argument("--out", required=True, help="run directory")
    args = parser.parse_args(argv)
    if os.environ.get(ENV_PARENT):
        _watch_parent(int(os.environ[ENV_PARENT]))

    from groupdiff.config import GroupDiffConfig
    from groupdiff.train.tracker import default_tracker
    from groupdiff.train.trainer import NonFiniteLossError, train
    from registry.mlflow_tracker import make_tracker, rank_from_env

    config = GroupDiffConfig.model_validate(json.loads(Path(args.config).read_text()))
    tracker = make_tracker(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
    if rank_from_env() == 0:  # and the run's metrics.jsonl, which the flow follows for console progress
        tracker = default_tracker(Path(args.out), tracker)
    try:
        result = train(config, args.out, tracker=tracker)
    except NonFiniteLossError as exc:
        print(f"training: error: {exc}", file=sys.stderr, flush=True)
        return 3
    finally:
        tracker.close()
    if os.environ.get("RANK", "0") == "0":
        print(f"[train_worker] finished at step {result.step}; checkpoint {result.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
