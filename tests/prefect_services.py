"""Helpers for tests that point this process at a Prefect server of their own."""
from __future__ import annotations


def drain_prefect_services(timeout: float = 30.0) -> None:
    """Deliver and stop Prefect's in-process background services (events, concurrency-slot leases, ...). Each keeps
    the API address it was created with, so a test module that points this process at a private Prefect server
    must drain them before that server stops: otherwise later tests reuse services bound to a dead address (the
    training concurrency slot then fails with a connection error and a Prefect test harness hangs on exit)."""
    from prefect._internal.concurrency.services import _QueueServiceBase

    _QueueServiceBase.drain_all(timeout=timeout, at_exit=False)


def stop_temporary_servers() -> None:
    """Stop the temporary Prefect servers that in-process flows without ``PREFECT_API_URL`` started. Prefect stops
    them at interpreter exit, logging to a console pytest has closed by then ('--- Logging error ---' and a
    traceback at the end of every run); stopped here, the log line goes where pytest still reads it."""
    from prefect.server.api.server import SubprocessASGIServer

    servers = [server for server in SubprocessASGIServer._instances.values() if server.server_process]
    if servers:
        drain_prefect_services()  # logs and events still queued for them, sent while they answer
    for server in servers:
        server.stop()
