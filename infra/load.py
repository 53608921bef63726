"""Load on the platform: many ``groupdiff-pipeline`` runs submitted through the Prefect REST API at once,
watched from outside (issue 15, item 2). Shared by the load test (``tests/infra/test_load.py``) and
``bench/load.py``.

* :func:`plan` builds the runs: ``runs`` flow-parameter sets cycling over the distinct sets (training steps x
  weights, all under one evaluation protocol: a seed or a guidance scale would change the protocol and make
  the versions incomparable), so each is submitted ``runs / distinct`` times (the copies must be cached).
* :func:`run_load` submits them all at once (one thread per request), then waits for every run while
  :class:`TrainingWatch` records when training subprocesses live (their pid files under
  ``<out>/pids/<flow run>/``, written by ``flows/training.py`` for as long as the process runs) and
  :class:`ApiProbe` times ``GET /flow_runs/{id}`` and ``POST /flow_runs/filter``.
* :func:`summary` turns the outcome into the benchmark's figures (queue wait = created -> running).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import httpx
from pydantic import BaseModel, ConfigDict, Field

from groupdiff.weights import Weights

from .stack import set_pool_limit

DEPLOYMENT = "groupdiff-pipeline/groupdiff-pipeline"
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# One pipeline run as small as it gets (baseline only, 2 training steps of a 1-block model, 40 samples, no
# bootstrap: the gate compares plain scores, so the champion must be the best version whatever the order).
TINY_RUN = dict(
    variants=["baseline"], group_size=2, data_limit=200, train_steps=2, batch_images=8, sampling_steps=2,
    num_samples=40, reference_limit=100, classifier_train_limit=200, threads=1, fd_bootstrap=0,
    overrides=["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "embed.classifier.eval_limit=100",
               "embed.classifier.width=8", "embed.classifier.feature_dim=16"],
)


class LoadConfig(BaseModel):
    """How many runs, how they differ, and how they are watched."""

    model_config = ConfigDict(extra="forbid")

    runs: int = Field(20, ge=1, le=1000, description="Flow runs submitted at once.")
    train_steps: list[int] = Field([2, 3], min_length=1, description="One distinct training per value (training "
                                   "steps: the evaluation protocol stays the same, so every version is comparable).")
    weights: list[Weights] = Field(["ema", "raw"], min_length=1, description="Weights sampled and registered: each "
                                   "training gives one distinct evaluation and model version per value.")
    seed: int = Field(0, ge=0, description="Seed of every run (one evaluation protocol). The trainings are new only "
                      "where the stack's store does not hold them yet: pick a seed no earlier run used.")
    pool_limit: int | None = Field(None, ge=1, le=1000, description="Flow runs of the work pool at once (its Prefect "
                                   "concurrency limit, set for the load and restored after); empty = as configured.")
    watch_poll_s: float = Field(0.05, gt=0, le=10, description="Seconds between looks at the training pid files.")
    probe_pause_s: float = Field(0.1, ge=0, le=10, description="Pause between two API latency probes.")
    wait_s: float = Field(900, gt=0, le=86_400, description="Seconds every run has to reach a final state.")
    request_timeout_s: float = Field(30, gt=0, le=600, description="Timeout of one REST request.")

    @property
    def distinct(self) -> int:
        """Distinct parameter sets (training steps x weights); the other runs are identical copies."""
        return len(self.train_steps) * len(self.weights)


def plan(base: dict, out: str, config: LoadConfig) -> list[dict]:
    """The flow parameters of every run: ``base`` pipeline params with ``config.seed``, records in ``out``; run ``i``
    takes distinct set ``i % distinct`` (its training steps and weights): each is submitted ``runs / distinct`` times."""
    if config.distinct > config.runs:
        raise ValueError(f"{config.distinct} distinct parameter sets (train_steps x weights) need at least as many "
                         f"runs, got runs={config.runs}")
    sets = [{"train_steps": s, "weights": w} for s in config.train_steps for w in config.weights]
    return [{"params": {**base, "seed": config.seed, **sets[i % len(sets)]}, "records": {"out": str(out)}}
            for i in range(config.runs)]


def deployment_id(client: httpx.Client, name: str = DEPLOYMENT) -> str:
    """The id of the deployment ``flow/deployment`` (an error naming it when it is not registered)."""
    response = client.get(f"/deployments/name/{name}")
    if response.status_code == 404:
        raise LookupError(f"deployment {name!r} is not registered; run `python -m flows.deployments deploy` first")
    response.raise_for_status()
    return response.json()["id"]


def submit(client: httpx.Client, dep_id: str, parameters: list[dict]) -> list[str]:
    """Create one flow run per parameter set, all requests in flight at once; returns the run ids in order."""
    def create(params: dict) -> str:
        response = client.post(f"/deployments/{dep_id}/create_flow_run", json={"parameters": params})
        if response.status_code != 201:
            raise RuntimeError(f"create_flow_run answered {response.status_code}: {response.text[:500]}")
        return response.json()["id"]

    with ThreadPoolExecutor(max_workers=len(parameters)) as pool:
        return list(pool.map(create, parameters))


class _Poller(threading.Thread):
    """A daemon thread calling ``tick`` until stopped."""

    def __init__(self, pause_s: float):
        super().__init__(daemon=True)
        self.pause_s, self._stop_event = pause_s, threading.Event()

    def tick(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.tick()
            self._stop_event.wait(self.pause_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.tick()


class TrainingWatch(_Poller):
    """Records, for every training subprocess, when its pid file was first and last seen (wall clock)."""

    def __init__(self, out: str | Path, poll_s: float):
        super().__init__(poll_s)
        self.root = Path(out) / "pids"
        self.intervals: dict[str, list[float]] = {}
        self.live: set[str] = set()

    def tick(self) -> None:
        now = time.time()
        live = {str(p) for p in self.root.glob("*/*")} if self.root.is_dir() else set()
        for key in live:
            self.intervals.setdefault(key, [now, now])[1] = now
        self.live = live

    def active(self) -> bool:
        """A training subprocess was alive at the last look."""
        return bool(self.live)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that share a moment (ends count before starts)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


class ApiProbe(_Poller):
    """Times ``GET /flow_runs/{id}`` and ``POST /flow_runs/filter`` in turn; each sample notes whether a
    training was running (``busy()``) when it was taken."""

    def __init__(self, client: httpx.Client, run_ids: list[str], busy: Callable[[], bool], pause_s: float):
        super().__init__(pause_s)
        self.client, self.run_ids, self.busy = client, run_ids, busy
        self.samples: list[tuple[float, bool]] = []  # (milliseconds, a training was running)
        self.errors: list[str] = []  # failed probes (an overloaded API answers errors: counted, not hidden)
        self._turn = 0

    def _request(self, run_id: str) -> httpx.Response:
        if self._turn % 2:
            return self.client.get(f"/flow_runs/{run_id}")
        return self.client.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": self.run_ids}},
                                                           "limit": len(self.run_ids)})

    def tick(self) -> None:
        self._turn += 1
        run_id = self.run_ids[self._turn % len(self.run_ids)]
        start = time.perf_counter()
        try:
            response = self._request(run_id)
        except httpx.HTTPError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        elapsed = (time.perf_counter() - start) * 1000.0
        if response.is_success:
            self.samples.append((elapsed, self.busy()))
        else:
            self.errors.append(f"{response.request.method} {response.request.url.path}: {response.status_code}")


def wait_all(client: httpx.Client, run_ids: list[str], wait_s: float, pause_s: float = 1.0) -> list[dict]:
    """Every run once it reached a final state, in ``run_ids`` order (AssertionError naming the stragglers)."""
    deadline = time.monotonic() + wait_s
    while True:
        response = client.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": run_ids}}, "limit": len(run_ids)})
        response.raise_for_status()
        runs = {r["id"]: r for r in response.json()}
        waiting = [i for i in run_ids if runs.get(i, {}).get("state", {}).get("type") not in TERMINAL]
        if not waiting:
            return [runs[i] for i in run_ids]
        if time.monotonic() > deadline:
            states = {i: runs.get(i, {}).get("state", {}).get("type") for i in waiting}
            raise AssertionError(f"{len(waiting)} flow runs not finished after {wait_s:.0f}s: {states}")
        time.sleep(pause_s)


def task_runs(client: httpx.Client, run_id: str) -> list[dict]:
    """The task runs of one flow run: ``name``, final ``state`` name (``Cached``, ``Completed``, ...) and ``key``,
    the cache key its result is stored under (the same for a step computed and read from the cache; None for a
    task whose result is not kept, such as the dataset's digest)."""
    response = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})
    response.raise_for_status()
    return [{"name": t["name"], "state": t["state"]["name"], "key": _result_key(t["state"])} for t in response.json()]


def _result_key(state: dict) -> str | None:
    data = state.get("data")
    stored = data.get("storage_key") if isinstance(data, dict) else None
    return Path(stored).name if stored else None


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def queue_wait_s(run: dict) -> float:
    """Seconds from the run's creation to its start (``created`` -> ``start_time``, when it entered Running)."""
    if not run.get("start_time"):
        raise ValueError(f"flow run {run['id']} never started (state {run['state']['type']})")
    return _seconds(run["start_time"]) - _seconds(run["created"])


@dataclass
class LoadResult:
    """What :func:`run_load` saw: the parameters sent, the final runs, their task states, trainings, latencies."""

    parameters: list[dict]
    runs: list[dict]
    tasks: list[list[dict]]
    trainings: list[tuple[float, float]]
    latencies: list[tuple[float, bool]]
    seconds: float
    extra: dict = field(default_factory=dict)


def run_load(api: str, pool: str, base: dict, out: str | Path, config: LoadConfig,
             echo: Callable[[str], None] = print) -> LoadResult:
    """Submit :func:`plan`'s runs to the ``groupdiff-pipeline`` deployment at once and watch them finish."""
    parameters = plan(base, str(out), config)
    with httpx.Client(base_url=api, timeout=config.request_timeout_s) as client:
        dep_id = deployment_id(client)
        before = set_pool_limit(api, pool, config.pool_limit) if config.pool_limit else None
        watch = TrainingWatch(out, config.watch_poll_s)
        watch.start()
        t0 = time.monotonic()
        try:
            run_ids = submit(client, dep_id, parameters)
            echo(f"submitted {len(run_ids)} runs ({config.distinct} distinct) in {time.monotonic() - t0:.2f}s")
            probe = ApiProbe(client, run_ids, watch.active, config.probe_pause_s)
            probe.start()
            try:
                runs = wait_all(client, run_ids, config.wait_s)
            finally:
                probe.stop()
        finally:
            watch.stop()
            if config.pool_limit:
                set_pool_limit(api, pool, before)
        seconds = time.monotonic() - t0
        tasks = [task_runs(client, run_id) for run_id in run_ids]
    trainings = [(s, e) for s, e in watch.intervals.values()]
    return LoadResult(parameters, runs, tasks, trainings, probe.samples, seconds, {"probe_errors": probe.errors})


def fully_cached(tasks: list[dict]) -> bool:
    """Every cached stage task of the run was served from the cache (the run computed nothing)."""
    keyed = [t for t in tasks if t["key"]]
    return bool(keyed) and all(t["state"] == "Cached" for t in keyed)


def computed_steps(result: "LoadResult") -> dict[str, list[str]]:
    """Cache key -> the names of the task runs (over every flow run) that computed it instead of reading the cache:
    each key should appear once, whichever run got there first."""
    steps: dict[str, list[str]] = {}
    for tasks in result.tasks:
        for t in tasks:
            if t["key"] and t["state"] != "Cached":
                steps.setdefault(t["key"], []).append(t["name"])
    return steps


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def summary(result: LoadResult) -> dict:
    """The benchmark's figures: runs submitted / completed / served whole from the cache, steps computed twice,
    the most trainings at once, API latency p50/p99 over the probes taken while a training ran (all probes when
    none was) and queue wait over every run that started."""
    busy = [ms for ms, training in result.latencies if training] or [ms for ms, _ in result.latencies]
    waits = [queue_wait_s(r) for r in result.runs if r.get("start_time")]
    return {
        "runs_submitted": len(result.runs),
        "runs_completed": sum(r["state"]["type"] == "COMPLETED" for r in result.runs),
        "runs_cached": sum(fully_cached(t) for t in result.tasks),
        "steps_computed_twice": sum(len(names) > 1 for names in computed_steps(result).values()),
        "max_concurrent_trainings": max_overlap(result.trainings),
        "api_p50_ms": round(_percentile(busy, 50), 1),
        "api_p99_ms": round(_percentile(busy, 99), 1),
        "queue_wait_p50_s": round(_percentile(waits, 50), 1),
        "queue_wait_max_s": round(max(waits), 1) if waits else float("nan"),
    }
