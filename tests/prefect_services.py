"""Helpers for tests that point this process at a Prefect server of their own."""
from __future__ import annotations


def drain_prefect_services(timeout: float = 30.0) -> None:
    """Deliver and stop Prefect's in-process background services (events, concurrency-slot leases, ...). Each keeps
    the API address it was created with, so a test module that points this process at a private Prefect server
    must drain them before that server stops: otherwise later tests reuse services bound to a dead address (the
    training concurrency slot then fails with a connection error and a Prefect test harness hangs on exit)."""
    from prefect._internal.concurrency.services import _QueueServiceBase

    _QueueServiceBase.drain_all(timeout=timeout, at_exit=False)
