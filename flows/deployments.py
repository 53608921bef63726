"""The deployments: ``groupdiff-pipeline``, ``retrain-nightly`` (cron), ``evaluate-model``, ``study``, ``fanout`` and
``ingest``.

Two ways to run them (both documented in the README, "Running on the platform"):

* ``python -m flows.deployments deploy [--pool local]``: register them with the Prefect server of
  ``$PREFECT_API_URL`` for a process work pool (``groupdiff up`` starts one, pool ``local``); the worker
  runs flows from this checkout (``flows.<module>.<flow>`` entry points).
* ``python -m flows.deployments serve``: serve them from this process (no worker, e.g. next to the
  embedded default); runs start when triggered from the UI/API or by the schedule.

Every deployment's parameters are the pydantic models of :mod:`flows.params`, so the UI shows forms with
descriptions, bounds and enums, and the server rejects invalid parameters before a run is created.
The training concurrency limit ``training-<pool>`` (1 slot) is created here as well.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NIGHTLY_CRON = "0 3 * * *"  # 03:00 every night (server timezone UTC unless configured)

# name -> (entry point "module.flow", description, cron or None)
DEPLOYMENTS = {
    "groupdiff-pipeline": ("flows.pipeline.pipeline",
                           "embed -> mine -> train -> sample -> score -> register the better as champion", None),
    "retrain-nightly": ("flows.maintenance.retrain_nightly",
                        "resume from the champion with the latest data, evaluate, promote only if better", NIGHTLY_CRON),
    "evaluate-model": ("flows.maintenance.evaluate_model",
                       "sample and score a registered model version under the pipeline's protocol", None),
    "study": ("flows.study.study", "grid of pipeline arms (N, grouping, variant, cfg sweep) with one comparison", None),
    "fanout": ("flows.fanout.fanout",
               "sample / embed / encode latents of a large set in shards on a Dask cluster (local or an address)", None),
    "ingest": ("flows.ingest.ingest",
               "an image folder or tar of class folders -> a dataset version (object store + catalogue)", None),
}


def _flow(entry: str):
    import importlib

    module, name = entry.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def ensure_training_limit(pool: str) -> str:
    """Create the global concurrency limit ``training-<pool>`` (``RecordsConfig.training_slots``' default,
    1 slot) if missing; returns its name."""
    from .records import RecordsConfig
    from .training import CONCURRENCY_PREFIX, _ensure_limit

    name = f"{CONCURRENCY_PREFIX}{pool}"
    _ensure_limit(name, RecordsConfig.model_fields["training_slots"].default)
    return name


def deploy(pool: str) -> list[str]:
    """Register every deployment for the process work pool ``pool``; returns their ids."""
    from prefect.deployments.runner import EntrypointType

    ids = []
    for name, (entry, description, cron) in DEPLOYMENTS.items():
        flow = _flow(entry).from_source(source=str(REPO_ROOT), entrypoint=entry)
        ids.append(str(flow.deploy(name=name, work_pool_name=pool, description=description, cron=cron,
                                   entrypoint_type=EntrypointType.MODULE_PATH, print_next_steps=False,
                                   tags=["groupdiff"], ignore_warnings=True)))
    ensure_training_limit(pool)
    return ids


def runner_deployments() -> list:
    """The deployments as RunnerDeployments for :func:`prefect.serve`."""
    from prefect.deployments.runner import EntrypointType

    out = []
    for name, (entry, description, cron) in DEPLOYMENTS.items():
        out.append(_flow(entry).to_deployment(name=name, description=description, cron=cron, tags=["groupdiff"],
                                              entrypoint_type=EntrypointType.MODULE_PATH))
    return out


def main(argv: list[str] | None = None) -> int:
    """``deploy`` to a work pool or ``serve`` from this process."""
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    dep = sub.add_parser("deploy", help="register the deployments with the Prefect server for a work pool")
    dep.add_argument("--pool", default="local", help="process work pool (default: local, as `groupdiff up` creates)")
    srv = sub.add_parser("serve", help="serve the deployments from this process (no worker)")
    srv.add_argument("--pool-name", default="local", help="name used for the training concurrency limit")
    args = parser.parse_args(argv)
    if args.mode == "deploy":
        ids = deploy(args.pool)
        print(f"registered {len(ids)} deployments for work pool {args.pool!r}: {', '.join(DEPLOYMENTS)}")
        return 0
    from prefect import serve

    ensure_training_limit(args.pool_name)
    serve(*runner_deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())
