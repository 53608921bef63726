"""``groupdiff up | down | status``: the local service stack (PostgreSQL, S3, Prefect, MLflow) on 127.0.0.1,
or on every interface behind credentials with ``up --expose``;
``groupdiff check``: the records (catalogue, MLflow registry) against the object store.

Thin hooks over ``infra.stack`` and ``registry.consistency``, imported inside the functions so that
``groupdiff --help`` stays fast.
"""
from __future__ import annotations

import argparse

SERVICES = ("postgres", "s3", "prefect", "worker", "mlflow")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=".groupdiff-stack", help="folder for data, logs and pid files")


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start the local service stack (idempotent) and print its addresses")
    _common(up)
    up.add_argument("--services", default=None,
                    help=f"comma-separated subset of {','.join(SERVICES)} (dependencies added); default all")
    for name in SERVICES:
        up.add_argument(f"--{name}-port", type=int, default=None, help=f"port of {name}")
    up.add_argument("--start-timeout", type=float, default=None, help="seconds a service may take to become healthy")
    up.add_argument("--pool-limit", type=int, default=None,
                    help="flow runs of the work pool at once (default: the last up's, else 4)")
    up.add_argument("--expose", action="store_true",
                    help="listen on 0.0.0.0 instead of 127.0.0.1 and require credentials everywhere: "
                         "MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, PREFECT_API_AUTH_STRING (user:password) "
                         "and PGPASSWORD from the environment or --secrets-file")
    up.add_argument("--secrets-file", default=None,
                    help="file of NAME=VALUE lines with those credentials, mode 0600 (the environment wins)")
    up.set_defaults(func=run_up)
    down = sub.add_parser("down", help="stop every service of the local stack (its data stays)")
    _common(down)
    down.add_argument("--purge", action="store_true",
                      help="then delete the stack's data (databases, every S3 object, logs, credentials), "
                           "listing what goes first")
    down.set_defaults(func=run_down)
    status = sub.add_parser("status", help="show the local stack's services and their health")
    _common(status)
    status.set_defaults(func=run_status)
    check = sub.add_parser(
        "check", help="check that every artefact the catalogue and the MLflow registry point to is in the object "
                      "store and intact, and list stored objects nothing references (exit 1 if one is missing)")
    check.add_argument("--store-root", default="", help="object store root; default $GROUPDIFF_STORE_ROOT or the embedded default")
    check.add_argument("--catalogue-url", default="", help="catalogue URL; default $GROUPDIFF_CATALOGUE_URL or the embedded default")
    check.add_argument("--mlflow-uri", default="", help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or the "
                                                        "embedded default; 'none' skips MLflow")
    check.add_argument("--no-verify-data", action="store_true",
                       help="check presence and recorded sizes only, without reading every object back")
    check.set_defaults(func=run_check)


def _config(args: argparse.Namespace):
    from infra.stack import load_config

    overrides = {f"{n}_port": getattr(args, f"{n}_port", None) for n in SERVICES}
    if getattr(args, "services", None):
        overrides["services"] = [s.strip() for s in args.services.split(",") if s.strip()]
    elif args.func is run_up:  # 'up' means the whole stack unless told otherwise; down/status use the last up's
        overrides["services"] = list(SERVICES)
    overrides["start_timeout_s"] = getattr(args, "start_timeout", None)
    overrides["pool_limit"] = getattr(args, "pool_limit", None)
    if args.func is run_up:  # exposed only when asked for, every time
        overrides["expose"] = args.expose
        overrides["secrets_file"] = args.secrets_file
    try:
        return load_config(args.state_dir, **overrides)
    except Exception as exc:  # pydantic ValidationError names the field and the bad value
        raise ValueError(str(exc)) from None


def run_up(args: argparse.Namespace) -> int:
    from infra.process import ServiceError
    from infra.stack import up

    try:
        up(_config(args))
    except ServiceError as exc:
        raise ValueError(str(exc)) from None
    return 0


def run_down(args: argparse.Namespace) -> int:
    from infra.process import ServiceError
    from infra.stack import down, purge

    config = _config(args)
    stopped = down(config)
    if not stopped:
        print("nothing was running")
    if args.purge:
        try:
            purge(config)
        except ServiceError as exc:
            raise ValueError(str(exc)) from None
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Prints one line per service; exit code 0 only when every service is running and healthy."""
    from rich.console import Console
    from rich.table import Table

    from infra.stack import status

    table = Table(title="groupdiff local stack")
    for col in ("service", "state", "pid", "address", "log"):
        table.add_column(col)
    rows = status(_config(args))
    for row in rows:
        state = "healthy" if row.healthy else ("unhealthy" if row.running else "stopped")
        table.add_row(row.name, state, str(row.pid or "-"), row.url or "", str(row.log))
    Console(width=200).print(table)
    return 0 if all(r.healthy for r in rows) else 1


def run_check(args: argparse.Namespace) -> int:
    """Prints each missing, corrupt or unreferenced artefact with what points at it; exit 1 when an artefact
    is missing or corrupt."""
    from registry.consistency import CheckConfig, format_report, run

    config = CheckConfig(store_root=args.store_root, catalogue_url=args.catalogue_url, mlflow_uri=args.mlflow_uri,
                         verify_data=not args.no_verify_data)
    report = run(config)
    print(format_report(report))
    return report.exit_code
