"""Fan-out: sampling, embedding and latent encoding of large sets, one shard per task on a Dask cluster.

One Prefect flow (``fanout``) plans the shards of one stage, maps a task per shard over Prefect's Dask
task runner (``prefect-dask``: a ``distributed.LocalCluster`` on 127.0.0.1 by default, or the scheduler at
``dask.address``), then merges. Every shard is computed by the library's own stage code
(``groupdiff.sample.stage.run``, ``groupdiff.grouping.embed.embed_dataset``,
``groupdiff.data.latents.encode_latents``), which writes each shard file to a temporary name and renames it
when complete; a shard's content depends only on the plan (seed, batch layout, shard size), never on the
worker, the number of workers or the order shards finish in. Hence:

* 1 worker or many give byte-identical files (``savez_reproducible`` removes the zip timestamps);
* a shard whose worker dies is rescheduled by Dask on another worker, a shard that raises is retried by
  Prefect (``dask.shard_retries``); either way only that shard is recomputed;
* a rerun into the same folder skips finished shards (a flow killed half-way resumes).

The merge step writes the stage's merged output (sampling: ``cfg<s>/samples.npz`` + ``grid.png`` +
``sample.json``; embeddings and latents are read as their shard folder by ``load_embeddings`` /
``LatentDataset``, which the merge step runs to validate them) and ``fanout.json``: the sha256 of every
shard and merged file in a fixed order.

Command line (one command, any number of workers)::

    python -m flows.fanout sample --out runs/xl2-l4 --checkpoint /ckpt/groupdiff-l4-xl2 --workers 8 ...
    python -m flows.fanout embed --out runs/emb --workers 2 --set embed.encoder=pixels
    python -m flows.fanout encode-latents --out runs/lat --address tcp://scheduler:8786 --set data.vae.weights=...

The deployment ``fanout`` (``flows.deployments``) runs the same flow with the same typed parameters.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from pydantic import Field, field_validator, model_validator

from groupdiff.atomic import write_json_atomic
from groupdiff.config import GroupDiffConfig, load_preset
from groupdiff.config_base import Section
from groupdiff.sample.stage import SampleStageConfig

Stage = Literal["sample", "embed", "encode-latents"]
RECORD = "fanout.json"
CONFIG_ERRORS = (ValueError, KeyError, FileNotFoundError, TypeError)  # a bad config fails at once, never retried


class DaskParams(Section):
    """Where the shard tasks run: a local Dask cluster started for the run, or an existing one."""

    address: str = Field(
        "", description="Address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786); its workers must see "
        "the output folder and have this project installed. Empty = start a local cluster on 127.0.0.1.",
    )
    workers: int = Field(2, ge=1, le=1024, description="Worker processes of the local cluster (ignored with an address).")
    threads: int = Field(
        1, ge=1, le=256,
        description="torch threads per worker process (the local cluster also runs 1 task per worker at a time).",
    )
    shard_retries: int = Field(2, ge=0, le=100, description="Prefect retries of a shard task that raised (a dead "
                               "worker's shard is rescheduled by Dask instead).")
    retry_delay_s: float = Field(1.0, ge=0.0, le=3600.0, description="Seconds between retries of a failed shard.")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value and "://" not in value and ":" not in value:
            raise ValueError(f"dask.address={value!r}; expected a scheduler address such as tcp://HOST:8786")
        return value


class FanoutParams(Section):
    """One fan-out run: which stage, its config (preset + overrides) and where the shards go."""

    stage: Stage = Field("sample", description="sample (class-balanced images, ADM .npz), embed (L2-normalised "
                         "embeddings) or encode-latents (SD-VAE latents).")
    out: str = Field(..., min_length=1, description="Output folder, seen by every worker (shared filesystem on a cluster).")
    preset: str = Field("tiny-fmnist", min_length=1, description="Config preset NAME (groupdiff/presets/NAME.yaml, e.g. tiny-fmnist) or a YAML path.")
    overrides: list[str] = Field(default_factory=list, description="Config overrides 'section.field=value' "
                                 "(e.g. embed.shard_size=5000, data.vae.weights=/weights/sd-vae-ft-ema).")
    checkpoint: str = Field("", description="sample: checkpoint folder or training run directory (empty = random "
                            "init from the preset, for tests).")
    sample: SampleStageConfig = Field(
        default_factory=lambda: SampleStageConfig(out_dir="."),
        description="sample: the sample stage settings (num_samples, batch_groups, batches_per_shard, cfg_scales, "
        "weights, device, ...); out_dir, rank and world_size are set by the fan-out.",
    )
    dask: DaskParams = Field(default_factory=DaskParams, description="The Dask cluster running the shard tasks.")

    @model_validator(mode="after")
    def _check(self) -> "FanoutParams":
        if self.sample.rank != 0 or self.sample.world_size != 1:
            raise ValueError(f"sample.rank={self.sample.rank}, sample.world_size={self.sample.world_size}: the fan-out "
                             "hands out shards itself; leave rank 0 and world_size 1")
        return self

    def config(self) -> GroupDiffConfig:
        """The full GroupDiffConfig (preset + overrides; for sampling from a checkpoint, the stored config
        + overrides is what the shard tasks use)."""
        return load_preset(self.preset, self.overrides)

    def stage_config(self) -> SampleStageConfig:
        """The sample stage config with the output folder of this run."""
        return self.sample.model_copy(update={"out_dir": self.out})


# ---------------------------------------------------------------------------------------------- worker side

_CACHE: dict[str, Any] = {}  # per worker process: model / dataset / encoder / VAE of the last plan it served


def _cached(key: str, build):
    if key not in _CACHE:
        _CACHE.clear()  # one plan at a time: free the previous model before loading the next
        _CACHE[key] = build()
    return _CACHE[key]


def _key(params: FanoutParams, *extra: Any) -> str:
    return hashlib.sha256(json.dumps([params.model_dump(exclude={"dask"}), extra], sort_keys=True,
                                     default=str).encode()).hexdigest()


def worker_device(device: str) -> str:
    """``cuda`` on a local cluster -> ``cuda:<worker number mod GPUs>`` so that local workers share the GPUs;
    any other device (or a worker with a non-numeric name, e.g. one per GPU under dask-cuda) as given."""
    if device != "cuda":
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except ValueError:  # not inside a Dask worker
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{int(name) % count}" if isinstance(name, int) and count > 0 else device


def _sample_model(params: FanoutParams):
    from groupdiff.sample.stage import load_model_and_config

    stage = params.stage_config()
    return load_model_and_config(params.checkpoint or None, params.preset, params.overrides,
                                 init_seed=stage.init_seed, weights=stage.weights)


def compute_shard(params: FanoutParams, shard: int, num_shards: int) -> dict:
    """Compute one shard of ``params.stage`` in this process (skipped if its file exists). Returns what
    was done, with this process's id and the seconds it took."""
    import torch

    torch.set_num_threads(params.dask.threads)
    started = time.perf_counter()
    if params.stage == "sample":
        from groupdiff.sample.stage import run

        model, config = _cached(_key(params, "sample"), lambda: _sample_model(params))
        stage = params.stage_config()
        stage = stage.model_copy(update={"device": worker_device(stage.device)})
        result = run(stage, config, model, progress=False, shards=[shard], merge=False)
        computed = result.shards_written > 0
    elif params.stage == "embed":
        from groupdiff.grouping.embed import embed_dataset, make_encoder

        config = params.config()

        def build():
            from groupdiff.data.datasets import build_dataset

            dataset = build_dataset(config.data)
            return dataset, make_encoder(dataset, config.embed)

        dataset, encoder = _cached(_key(params, "embed"), build)
        done = embed_dataset(dataset, config.embed, params.out, rank=shard, world_size=num_shards,
                             encoder=encoder, num_workers=config.data.num_workers)
        computed = bool(done["computed"])
    else:
        from groupdiff.data.latents import build_vae, encode_latents

        config = params.config()
        device = worker_device(_latent_device(config))

        def build():
            from groupdiff.data.datasets import build_dataset

            return build_dataset(config.data), *build_vae(config.data.vae, device)

        dataset, vae, vae_digest = _cached(_key(params, "latents", device), build)
        done = encode_latents(dataset, config.data.vae, params.out, rank=shard, world_size=num_shards,
                              device=device, vae=vae, vae_digest=vae_digest, num_workers=config.data.num_workers)
        computed = bool(done["computed"])
    return {"shard": shard, "computed": computed, "pid": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3)}


def _latent_device(config: GroupDiffConfig) -> str:
    device = config.data.vae.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _retry_unless_config_error(task, task_run, state) -> bool:
    """Retry a failed shard unless it failed on a bad config (those fail the same way every time)."""
    try:
        state.result()
    except CONFIG_ERRORS:
        return False
    except BaseException:
        return True
    return False


@task(name="fanout-shard", cache_policy=NO_CACHE, retry_condition_fn=_retry_unless_config_error)
def shard_task(params: FanoutParams, shard: int, num_shards: int) -> dict:
    """One shard on a Dask worker (see :func:`compute_shard`)."""
    return compute_shard(params, shard, num_shards)


# ------------------------------------------------------------------------------------------- planning, merge

def plan(params: FanoutParams) -> int:
    """Number of shards of this run (a bad config fails here, before any cluster starts)."""
    if params.stage == "sample":
        from groupdiff.sample.stage import shard_count

        if params.checkpoint:
            from groupdiff.config import apply_overrides
            from groupdiff.sample.stage import resolve_checkpoint_dir
            from groupdiff.train.checkpoint import CheckpointDir

            saved = CheckpointDir(resolve_checkpoint_dir(params.checkpoint)).read_config()  # errors name the file
            config = GroupDiffConfig.model_validate(apply_overrides(saved, params.overrides))
        else:
            config = params.config()
        return shard_count(params.stage_config(), config)
    from groupdiff.data.datasets import build_dataset
    from groupdiff.data.shards import num_shards

    config = params.config()
    if params.stage == "encode-latents" and config.data.dataset == "latents":
        raise ValueError("data.dataset='latents' is already encoded; point data at the image folder to encode")
    shard_size = config.embed.shard_size if params.stage == "embed" else config.data.vae.shard_size
    return num_shards(len(build_dataset(config.data)), shard_size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_files(params: FanoutParams) -> list[Path]:
    """The deterministic files of a finished run, in a fixed order (shards, then merged files)."""
    out = Path(params.out)
    if params.stage == "sample":
        from groupdiff.sample.stage import PLAN_FILE

        stage = params.stage_config()
        files = sorted((out / "shards").glob("*/shard_*.npz"))
        files += sorted(p for p in out.glob("cfg*/*") if p.name in ("samples.npz", "grid.png"))
        return [out / PLAN_FILE, *files]
    from groupdiff.data.latents import MANIFEST as LATENTS_MANIFEST
    from groupdiff.data.latents import PREFIX as LATENTS_PREFIX
    from groupdiff.grouping.embed import MANIFEST as EMBED_MANIFEST
    from groupdiff.grouping.embed import PREFIX as EMBED_PREFIX

    manifest, prefix = (EMBED_MANIFEST, EMBED_PREFIX) if params.stage == "embed" else (LATENTS_MANIFEST, LATENTS_PREFIX)
    return [out / manifest, out / "labels.npy", *sorted(out.glob(f"{prefix}-*.npy"))]


def merge(params: FanoutParams, num_shards: int) -> dict:
    """Merge a complete run (error naming missing shards otherwise) and write ``fanout.json``."""
    out = Path(params.out)
    outputs: dict[str, str] = {}
    if params.stage == "sample":
        from groupdiff.sample.stage import run

        model, config = _cached(_key(params, "sample"), lambda: _sample_model(params))
        result = run(params.stage_config(), config, model, progress=False, shards=[], merge=True)
        scales = params.sample.scales(config)
        if len(result.npz) != len(scales):
            missing = sorted(str(p.relative_to(out)) for s in scales for i in range(num_shards)
                             if not (p := out / "shards" / f"cfg{s:g}" / f"shard_{i:05d}.npz").is_file())
            raise RuntimeError(f"{out}: cannot merge, shard files missing: {missing[:10]}")
        outputs = {f"cfg{s:g}": str(p) for s, p in result.npz.items()}
    elif params.stage == "embed":
        from groupdiff.grouping.embed import load_embeddings

        emb = load_embeddings(out)  # errors name missing shards, NaN rows or non-unit rows
        outputs = {"embeddings": str(out), "rows": str(len(emb.vectors)), "digest": emb.digest}
    else:
        from groupdiff.data.latents import LatentDataset

        lat = LatentDataset(out)
        outputs = {"latents": str(out), "rows": str(len(lat)), "digest": lat.meta["digest"]}
    files = {str(p.relative_to(out)): _sha256(p) for p in output_files(params)}
    record = {"stage": params.stage, "num_shards": num_shards, "files": files,
              "digest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()}
    write_json_atomic(out / RECORD, record, sort_keys=True, default=None)
    return {"outputs": outputs, "digest": record["digest"], "files": len(files)}


@task(name="fanout-merge", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1,
      retry_condition_fn=_retry_unless_config_error)
def merge_task(params: FanoutParams, num_shards: int, shards: list[dict]) -> dict:
    """Merge on a worker once every shard task has finished (``shards`` only orders it after them)."""
    return merge(params, num_shards)


# ----------------------------------------------------------------------------------------------- the flows

def dask_task_runner(dask: DaskParams):
    """Prefect's DaskTaskRunner: the scheduler at ``dask.address``, or a LocalCluster on 127.0.0.1 with
    ``dask.workers`` worker processes running one task each at a time."""
    from prefect_dask import DaskTaskRunner

    if dask.address:
        return DaskTaskRunner(address=dask.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": dask.workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
        "dashboard_address": None,
    })


@flow(name="fanout-shards")
def fanout_shards(params: FanoutParams, num_shards: int) -> dict:
    """Map one task per shard over the task runner, then merge (runs with a Dask task runner)."""
    runner = shard_task.with_options(retries=params.dask.shard_retries, retry_delay_seconds=params.dask.retry_delay_s)
    futures = runner.map(unmapped(params), list(range(num_shards)), unmapped(num_shards))
    done = merge_task.submit(params, num_shards, futures).result()
    return {"shards": [f.result() for f in futures], **done}


@flow(name="fanout", log_prints=True)
def fanout(params: FanoutParams) -> dict:
    """Sample / embed / encode latents of a large set in shards on a Dask cluster, then merge.

    Returns the run summary (shards computed and skipped, worker processes, seconds, merged outputs and
    the digest of ``fanout.json``)."""
    num_shards = plan(params)
    Path(params.out).mkdir(parents=True, exist_ok=True)
    where = params.dask.address or f"a local Dask cluster ({params.dask.workers} workers)"
    get_run_logger().info("%s: %d shards on %s into %s", params.stage, num_shards, where, params.out)
    started = time.perf_counter()
    result = fanout_shards.with_options(task_runner=dask_task_runner(params.dask))(params, num_shards)
    shards = result.pop("shards")
    summary = {
        "stage": params.stage, "out": params.out, "num_shards": num_shards,
        "computed": sorted(s["shard"] for s in shards if s["computed"]),
        "skipped": sorted(s["shard"] for s in shards if not s["computed"]),
        "worker_pids": sorted({s["pid"] for s in shards}), "shard_seconds": {s["shard"]: s["seconds"] for s in shards},
        "seconds": round(time.perf_counter() - started, 3), **result,
    }
    get_run_logger().info("%s: %d shards computed, %d already there, %.1f s; %s", params.stage,
                          len(summary["computed"]), len(summary["skipped"]), summary["seconds"], summary["outputs"])
    return summary


# --------------------------------------------------------------------------------------------- command line

def build_params(argv: list[str] | None = None) -> FanoutParams:
    """FanoutParams from ``python -m flows.fanout`` arguments."""
    parser = argparse.ArgumentParser(prog="python -m flows.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["sample", "embed", "encode-latents"])
    parser.add_argument("--out", required=True, help="output folder (shared by every worker)")
    parser.add_argument("--preset", default="tiny-fmnist", help="config preset or YAML path (default tiny-fmnist)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override section.field=value (repeatable)")
    parser.add_argument("--address", default="", help="Dask scheduler address (default: a local cluster)")
    parser.add_argument("--workers", type=int, default=DaskParams.model_fields["workers"].default,
                        help="local cluster worker processes")
    parser.add_argument("--threads", type=int, default=DaskParams.model_fields["threads"].default,
                        help="torch threads per worker")
    parser.add_argument("--shard-retries", type=int, default=DaskParams.model_fields["shard_retries"].default)
    parser.add_argument("--checkpoint", default="", help="sample: checkpoint folder or run directory")
    sample = parser.add_argument_group("sample stage (as in `groupdiff sample`)")
    fields = SampleStageConfig.model_fields
    sample.add_argument("--num-samples", type=int, default=fields["num_samples"].default)
    sample.add_argument("--batch-groups", type=int, default=fields["batch_groups"].default)
    sample.add_argument("--batches-per-shard", type=int, default=fields["batches_per_shard"].default)
    sample.add_argument("--cfg-scales", type=float, nargs="*", default=[])
    sample.add_argument("--grid-groups", type=int, default=fields["grid_groups"].default)
    sample.add_argument("--no-attention-score", action="store_true")
    sample.add_argument("--weights", choices=["ema", "raw"], default=fields["weights"].default)
    sample.add_argument("--device", default=fields["device"].default,
                        help="cpu or cuda (local workers take GPU <worker number> mod <GPUs>)")
    args = parser.parse_args(argv)
    stage = SampleStageConfig(
        out_dir=".", num_samples=args.num_samples, batch_groups=args.batch_groups,
        batches_per_shard=args.batches_per_shard, cfg_scales=args.cfg_scales, grid_groups=args.grid_groups,
        attention_score=not args.no_attention_score, weights=args.weights, device=args.device,
    )
    return FanoutParams(
        stage=args.stage, out=str(Path(args.out).resolve()), preset=args.preset, overrides=args.overrides,
        checkpoint=args.checkpoint, sample=stage,
        dask=DaskParams(address=args.address, workers=args.workers, threads=args.threads,
                        shard_retries=args.shard_retries),
    )


@contextmanager
def shared_api() -> Iterator[str]:
    """The Prefect API every process of the run reports to: ``PREFECT_API_URL`` when set, otherwise one
    temporary local server started here and handed to the Dask workers (through the environment they
    inherit and Prefect's settings context); without this each worker process would start its own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's own ephemeral server (one per process)
    server.start()
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the fan-out flow once from the command line and print its summary as JSON (last line)."""
    try:
        params = build_params(argv)
        plan(params)  # bad settings fail before Prefect or Dask start
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"fanout: error: {exc}", file=sys.stderr)
        return 2
    with shared_api():
        summary = fanout(params)
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
