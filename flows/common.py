"""Shared task plumbing: content-digest cache keys, retries on storage/network errors, nested MLflow runs."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from prefect.tasks import exponential_backoff

from groupdiff.data.digest import digest_json

RETRIES = 3  # storage/network errors only (see retry_on_io); compute errors fail at once
BACKOFF_S = 2.0  # waits 2, 4, 8 s (Prefect's exponential_backoff)
RETRY_DELAYS = exponential_backoff(backoff_factor=BACKOFF_S)


def stage_digest(stage: str, **inputs: Any) -> str:
    """Content digest of a stage: its name, config and the digests of its inputs (JSON-able values)."""
    return digest_json({"stage": stage, **inputs})


def digest_cache_key(context, parameters: Mapping[str, Any]) -> str:
    """Prefect cache key = the stage's content digest (passed as the task's ``digest`` parameter), the store
    it lives in and the local work folder its result points into: an unchanged step is a cache hit across
    flow runs. Elsewhere (another store, another machine's folder) the task runs and finds its object
    already in the store instead of recomputing it."""
    records = parameters["records"].resolved()
    return f"{parameters['digest']}-{digest_json([records.store_root, records.out])}"


def _io_errors() -> tuple[type[BaseException], ...]:
    from registry.objectstore import ChecksumMismatchError, ObjectStoreError

    errors: list[type[BaseException]] = [ObjectStoreError, ChecksumMismatchError, ConnectionError, TimeoutError,
                                         socket.timeout]
    try:
        from urllib3.exceptions import HTTPError

        errors.append(HTTPError)
    except ImportError:  # pragma: no cover - urllib3 comes with minio/mlflow
        pass
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout

        errors += [RequestsConnectionError, Timeout]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def retry_on_io(task, task_run, state) -> bool:
    """Retry condition: only storage / network failures are retried (a bad config fails at once)."""
    try:
        state.result()
    except _io_errors():
        return True
    except BaseException:
        return False
    return False


def log_params(records, run_id: str, params: Mapping[str, Any]) -> None:
    """Flattened ``section.field`` params on an MLflow run (values truncated to MLflow's limit)."""
    from mlflow.entities import Param

    from groupdiff.tracking import flatten
    from registry.mlflow_tracker import PARAM_VALUE_MAX, PARAMS_PER_BATCH

    items = [Param(k, str(v)[:PARAM_VALUE_MAX]) for k, v in flatten(dict(params)).items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        records.mlflow.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])


@contextmanager
def stage_run(records, parent_run_id: str | None, name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """An MLflow run for one stage, nested under the pipeline's run; ended FAILED if the body raises."""
    from registry.mlflow_tracker import PARENT_TAG

    client = records.mlflow
    all_tags = {"groupdiff.stage": name, **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run_id = client.create_run(records.experiment_id(), run_name=name, tags=all_tags).info.run_id
    if params:
        log_params(records, run_id, params)
    try:
        yield run_id
    except BaseException:
        end_failed_run(client, run_id)
        raise
    client.set_terminated(run_id, "FINISHED")


def end_failed_run(client, run_id: str) -> None:
    """End an MLflow run as FAILED while the error that ended it propagates: when MLflow itself is what failed,
    this call fails too, and must not replace that error (it is logged instead, to the run's log when in one)."""
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 - any failure here would hide the error being raised
        try:
            log = get_run_logger()
        except MissingContextError:
            log = logging.getLogger(__name__)
        log.warning("could not mark MLflow run %s FAILED: %s", run_id, exc)


def cache_policy():
    """The stage tasks' cache policy: :func:`digest_cache_key`, and identical tasks running at once serialised on
    that key (``SERIALIZABLE``, :class:`flows.locks.FlockLockManager`): the second waits and is ``Cached``."""
    from prefect.cache_policies import CacheKeyFnPolicy

    from .locks import FlockLockManager

    return CacheKeyFnPolicy(cache_key_fn=digest_cache_key).configure(lock_manager=FlockLockManager(),
                                                                     isolation_level="SERIALIZABLE")


def task_options(name: str) -> dict[str, Any]:
    """The options every cached stage task shares (cache policy, retries with backoff, persisted result)."""
    return {"name": name, "cache_policy": cache_policy(), "retries": RETRIES, "retry_delay_seconds": RETRY_DELAYS,
            "retry_condition_fn": retry_on_io, "persist_result": True}


def console_echo(logger) -> Callable[[str], None]:
    """A one-line progress sink: logs at INFO (the Prefect UI shows it) and, when the console handlers would
    hide INFO (``groupdiff run`` sets ``PREFECT_LOGGING_LEVEL=WARNING`` to keep Prefect's own chatter off the
    console), also writes the line to the process's real stdout, so long stages stay visible."""
    import logging
    import sys

    def echo(line: str) -> None:
        logger.info(line)
        if not logging.getLogger("prefect").isEnabledFor(logging.INFO):
            sys.__stdout__.write(line + "\n")
            sys.__stdout__.flush()

    return echo
