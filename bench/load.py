"""Benchmark: the platform under load (issue 15, item 2): N ``groupdiff-pipeline`` runs submitted through the
Prefect REST API at once against a local stack, the tiny run of ``infra.load.TINY_RUN`` (baseline only, 2
training steps of a 1-block model, 40 samples): one distinct set per ``--train-steps`` x ``--weights`` value
(one evaluation protocol, so every registered version is comparable), the other runs identical copies.

Measures, from outside the flows (``infra/load.py``): queue wait per run (created -> Running), API latency
of ``GET /flow_runs/{id}`` and ``POST /flow_runs/filter`` polled while trainings run, runs completed and
served whole from the cache, the most training subprocesses alive at once (their pid files), and whether
the registry's aliases are consistent at the end. Prints a human summary, then as its LAST line one JSON
object: runs_submitted, runs_completed, runs_cached, max_concurrent_trainings, api_p50_ms, api_p99_ms,
queue_wait_p50_s, queue_wait_max_s (plus steps_computed_twice, seconds, stack_cpu_s, distinct, seed,
pool_limit, aliases_consistent).

Usage: .venv/bin/python bench/load.py [--runs 20] [--train-steps 2 3] [--weights ema raw] [--pool-limit 4]
       .venv/bin/python bench/load.py --use-running   # the stack of $PREFECT_API_URL etc. (stack.env)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.load import TINY_RUN, LoadConfig, LoadResult, fully_cached, queue_wait_s, run_load, summary  # noqa: E402

FIELDS = LoadConfig.model_fields


def build_parser() -> argparse.ArgumentParser:
    """The command line (defaults from :class:`infra.load.LoadConfig`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=FIELDS["runs"].default, help=FIELDS["runs"].description)
    parser.add_argument("--train-steps", type=int, nargs="+", default=FIELDS["train_steps"].default,
                        help=FIELDS["train_steps"].description)
    parser.add_argument("--weights", nargs="+", default=FIELDS["weights"].default, help=FIELDS["weights"].description)
    parser.add_argument("--seed", type=int, default=None, help="seed of every run (default: from the clock, so the "
                        "trainings are new on a stack that ran this before)")
    parser.add_argument("--pool-limit", type=int, default=4, help=FIELDS["pool_limit"].description + " 0 = as configured.")
    parser.add_argument("--use-running", action="store_true", help="use the stack of the environment ($PREFECT_API_URL, "
                        "$MLFLOW_TRACKING_URI: `set -a; . .groupdiff-stack/stack.env; set +a`) instead of starting one")
    parser.add_argument("--pool", default="local", help="work pool of the running stack (--use-running)")
    parser.add_argument("--state-dir", default=".groupdiff-stack", help="state folder of the running stack "
                        "(--use-running): its pid files give the CPU time its processes use")
    parser.add_argument("--out", default=None, help="records folder of the runs (default: a new temporary folder)")
    return parser


@contextmanager
def stack(args):
    """(client environment, work pool, state folder) of the running stack, or of a throwaway one on free ports."""
    if args.use_running:
        missing = [k for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI") if not os.environ.get(k)]
        if missing:
            raise SystemExit(f"--use-running needs {', '.join(missing)} in the environment (source stack.env)")
        yield dict(os.environ), args.pool, Path(args.state_dir)
        return
    from infra.config import StackConfig
    from infra.process import free_stack_ports
    from infra.stack import client_env, down, up

    state = Path(tempfile.mkdtemp(prefix="groupdiff-load-"))
    state.chmod(0o755)  # the unprivileged PostgreSQL user enters it
    config = StackConfig(state_dir=state, pg_durable=False, **free_stack_ports())
    try:
        t0 = time.monotonic()
        up(config, echo=lambda line: print(f"  {line}"))
        print(f"stack up in {time.monotonic() - t0:.1f}s")
        yield client_env(config), config.work_pool, state
    finally:
        down(config, echo=lambda _: None)
        shutil.rmtree(state, ignore_errors=True)


def stack_cpu_s(state: Path) -> float:
    """CPU seconds used so far by the stack's services and every process they started, running or finished
    (the worker's flow runs and their trainings included); 0 where no pid file is found."""
    import psutil

    from infra.config import ALL_SERVICES
    from infra.process import read_pid

    total = 0.0
    for name in ALL_SERVICES:
        pid = read_pid(state, name)
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)] if pid else []
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def report(result: LoadResult, figures: dict, problems: list[str]) -> None:
    """One line per run (its set, state, queue wait, run time, cached), the trainings, then the figures."""
    t0 = min(s for s, _ in result.trainings) if result.trainings else 0.0
    for i, (params, run, tasks) in enumerate(zip(result.parameters, result.runs, result.tasks)):
        wait = f"{queue_wait_s(run):6.1f}s" if run.get("start_time") else "     -"
        took = f"{run.get('total_run_time', 0.0):6.1f}s"
        cached = "cached" if fully_cached(tasks) else "computed " + ", ".join(
            sorted(t["name"] for t in tasks if t["key"] and t["state"] != "Cached"))
        print(f"run {i:2d} steps {params['params']['train_steps']} {params['params']['weights']}: "
              f"{run['state']['type']:9s} queue {wait} ran {took} {cached}")
        if run["state"]["type"] != "COMPLETED":
            print(f"        {run['id']}: {(run['state'].get('message') or '')[:300]}")
    for start, end in sorted(result.trainings):
        print(f"training  {start - t0:7.1f}s -> {end - t0:7.1f}s ({end - start:.1f}s)")
    print(f"{figures['runs_completed']}/{figures['runs_submitted']} completed in {result.seconds:.1f}s, "
          f"{figures['runs_cached']} served whole from the cache, {figures['steps_computed_twice']} steps computed "
          f"twice, at most {figures['max_concurrent_trainings']} "
          f"training(s) at once; API p50 {figures['api_p50_ms']} ms, p99 {figures['api_p99_ms']} ms "
          f"({len(result.latencies)} probes, {len(result.extra['probe_errors'])} failed); queue wait p50 "
          f"{figures['queue_wait_p50_s']}s, max {figures['queue_wait_max_s']}s")
    print("registry aliases: " + ("consistent" if not problems else "; ".join(problems)))


def main(argv: list[str] | None = None) -> int:
    """Start or use a stack, deploy, submit the runs at once, report."""
    args = build_parser().parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    config = LoadConfig(runs=args.runs, train_steps=args.train_steps, weights=args.weights, seed=seed,
                        pool_limit=args.pool_limit or None)
    model = f"gd-load-bench-{int(time.time())}"
    with stack(args) as (env, pool, state):
        os.environ.update(env)
        from mlflow import MlflowClient
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.deployments import deploy
        from registry.mlflow_registry import alias_problems

        out = args.out or tempfile.mkdtemp(prefix="groupdiff-load-out-")
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            deploy(pool)
            cpu0 = stack_cpu_s(state)
            result = run_load(env["PREFECT_API_URL"], pool, {**TINY_RUN, "model_name": model}, out, config)
            cpu = stack_cpu_s(state) - cpu0
        problems = alias_problems(MlflowClient(env["MLFLOW_TRACKING_URI"]), model, "fd_fmnist")
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)  # the runs' work folders; the records stay in the stack
    figures = summary(result)
    report(result, figures, problems)
    print(f"CPU time of the stack and its runs during the load: {cpu:.0f}s ({cpu / 2:.0f}s of wall time at least "
          f"on 2 idle cores; the load took {result.seconds:.0f}s, load average {os.getloadavg()[0]:.1f} at its end)")
    print(json.dumps({**figures, "seconds": round(result.seconds, 1), "stack_cpu_s": round(cpu, 1),
                      "distinct": config.distinct, "seed": config.seed, "pool_limit": config.pool_limit,
                      "aliases_consistent": not problems}))
    return 0 if figures["runs_completed"] == figures["runs_submitted"] and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
