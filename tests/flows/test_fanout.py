"""The fan-out flow on real local Dask clusters (127.0.0.1): 1 worker and 2 workers write the same bytes for
sampling, embeddings and latents, equal to the library stage run in one process; a worker SIGKILLed in the
middle of a shard loses nothing (Dask reschedules that shard on another worker)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flows.fanout import DaskParams, FanoutParams, fanout, output_files, plan
from groupdiff.sample.stage import SampleStageConfig

pytestmark = pytest.mark.integration  # Prefect's temporary API server and Dask worker processes

# 32 px / patch 4 (64 tokens), not the preset's 16 px: a shard must take long enough (~1 s) for the kill test
# to catch a worker inside it; at 16 tokens shards finished before the killer could see one running.
SAMPLE_OVERRIDES = ["model.input_size=32", "data.image_size=32", "sampler.num_steps=6", "sampler.method=ode-euler",
                    "guidance.mode=groupdiff-l", "guidance.group_size=2", "guidance.cfg_scale=1.5"]
SAMPLE = SampleStageConfig(out_dir=".", num_samples=40, batch_groups=2, batches_per_shard=2, grid_groups=2)


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="module")
def clusters(prefect_api):
    """Two running local clusters (1 and 2 workers) reached through the address option, shared by tests
    (a cluster start costs seconds of worker imports on 2 cores)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c1, \
         LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c2:
        yield {1: c1.scheduler_address, 2: c2.scheduler_address}


def sample_params(out: Path, **dask) -> FanoutParams:
    return FanoutParams(stage="sample", out=str(out), overrides=SAMPLE_OVERRIDES, sample=SAMPLE,
                        dask=DaskParams(**dask))


def folder_bytes(params: FanoutParams) -> dict[str, bytes]:
    """Every deterministic output file (shards, merged files, manifests) plus fanout.json, by relative path."""
    out = Path(params.out)
    files = {str(p.relative_to(out)): p.read_bytes() for p in output_files(params)}
    files["fanout.json"] = (out / "fanout.json").read_bytes()
    return files


def assert_same_files(a: FanoutParams, b: FanoutParams) -> None:
    fa, fb = folder_bytes(a), folder_bytes(b)
    assert sorted(fa) == sorted(fb)
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, f"files differ between {a.out} and {b.out}: {different}"


@pytest.fixture(scope="module")
def sample_one_worker(prefect_api, tmp_path_factory):
    params = sample_params(tmp_path_factory.mktemp("sample1"), workers=1)
    return params, fanout(params)


def test_sample_two_workers_equal_one_worker_and_the_stage(sample_one_worker, tmp_path, one_torch_thread):
    from groupdiff.metrics.npz import read_samples_npz
    from groupdiff.sample.stage import load_model_and_config, run

    one, r1 = sample_one_worker
    two = sample_params(tmp_path / "two", workers=2)
    r2 = fanout(two)
    assert r1["num_shards"] == r2["num_shards"] == 5  # 40 images = 20 groups of 2, 2 groups a batch, 2 batches a shard
    assert r1["computed"] == r2["computed"] == list(range(5)) and not r2["skipped"]
    assert len(r1["worker_pids"]) == 1 and len(r2["worker_pids"]) == 2  # both workers did shards
    assert_same_files(one, two)
    assert r1["digest"] == r2["digest"] and r1["files"] == 5 + 3  # plan, 5 shards, samples.npz, grid.png
    # sample.json (the stage record) differs only in its timing
    s1, s2 = (json.loads((Path(p.out) / "sample.json").read_text()) for p in (one, two))
    assert {k: v for k, v in s1.items() if k not in ("seconds", "outputs", "grids", "stage")} == \
           {k: v for k, v in s2.items() if k not in ("seconds", "outputs", "grids", "stage")}
    # ... and the fan-out is the library stage: one process, all shards, same bytes
    model, config = load_model_and_config(None, "tiny-fmnist", SAMPLE_OVERRIDES, weights=SAMPLE.weights)
    direct = run(SAMPLE.model_copy(update={"out_dir": str(tmp_path / "direct")}), config, model, progress=False)
    merged = read_samples_npz(Path(one.out) / "cfg1.5" / "samples.npz")
    assert (tmp_path / "direct" / "cfg1.5" / "samples.npz").read_bytes() == \
           (Path(one.out) / "cfg1.5" / "samples.npz").read_bytes()
    size = config.data.image_size
    assert direct.npz and merged.images.shape == (40, size, size, 1) and np.isfinite(merged.extras["s_cross"]).all()
    assert np.bincount(merged.labels, minlength=10).tolist() == [4] * 10  # class balanced


def test_sample_rerun_skips_finished_shards(sample_one_worker, clusters):
    one, first = sample_one_worker
    again = fanout(one.model_copy(update={"dask": DaskParams(address=clusters[2])}))
    assert again["computed"] == [] and again["skipped"] == list(range(5)) and again["digest"] == first["digest"]


def test_worker_killed_mid_shard_loses_nothing(sample_one_worker, tmp_path):
    """A real external cluster (the address option): SIGKILL the worker process while it computes a shard."""
    from distributed import Client, LocalCluster

    reference, _ = sample_one_worker
    out = tmp_path / "killed"
    killed: dict = {}

    def executing(dask_worker) -> list[str]:
        return [str(ts.key) for ts in dask_worker.state.executing]

    def killer(address: str) -> None:
        with Client(address, timeout=30) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                busy = {w: keys for w, keys in client.run(executing).items() if keys}
                shard_files = list((out / "shards").glob("*/shard_*.npz"))
                if busy and shard_files:  # the model is loaded and shards are being computed
                    worker, keys = next(iter(busy.items()))
                    time.sleep(0.2)
                    if client.run(executing, workers=[worker]).get(worker) == keys:  # still inside that shard
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        killed.update(pid=pid, files_before=len(shard_files), keys=keys)
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        params = sample_params(out, address=cluster.scheduler_address)
        thread = threading.Thread(target=killer, args=(cluster.scheduler_address,), daemon=True)
        thread.start()
        result = fanout(params)
        thread.join(timeout=60)
    assert killed, "the test never caught a worker inside a shard"
    assert killed["files_before"] < 5  # the kill happened while shards were still missing
    assert killed["pid"] not in result["worker_pids"]  # the killed worker's shard was finished by another process
    # every shard is there; a shard is skipped only if its file was complete before the kill (the worker died
    # after writing it but before reporting back); the others were computed again
    assert sorted(result["computed"] + result["skipped"]) == list(range(5))
    assert len(result["skipped"]) <= killed["files_before"]
    assert_same_files(reference, params)
    assert not list(Path(params.out).rglob("*.tmp*"))  # no half-written file left behind


def test_embed_two_workers_equal_one_worker(clusters, tmp_path, one_torch_thread):
    from groupdiff.data.datasets import build_dataset
    from groupdiff.grouping.embed import embed_dataset, load_embeddings

    overrides = ["data.limit=300", "embed.encoder=pixels", "embed.pca_dim=16", "embed.pca_fit_items=200",
                 "embed.shard_size=60", "embed.batch_size=30", "embed.device=cpu"]
    runs = {w: FanoutParams(stage="embed", out=str(tmp_path / f"w{w}"), overrides=overrides,
                            dask=DaskParams(address=clusters[w])) for w in (1, 2)}
    results = {w: fanout(p) for w, p in runs.items()}
    assert results[1]["num_shards"] == 5 and results[2]["computed"] == list(range(5))
    assert len(results[2]["worker_pids"]) == 2
    assert_same_files(runs[1], runs[2])
    emb = load_embeddings(tmp_path / "w2")
    assert emb.vectors.shape == (300, 16) and np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    config = runs[1].config()  # the library stage in this process: the same shard bytes
    embed_dataset(build_dataset(config.data), config.embed, tmp_path / "direct")
    for name, data in folder_bytes(runs[1]).items():
        if name != "fanout.json":
            assert (tmp_path / "direct" / name).read_bytes() == data, name


def test_encode_latents_two_workers_equal_one_worker(clusters, tmp_path, tiny_vae):
    from PIL import Image

    from groupdiff.data.datasets import build_dataset

    _, vae_root = tiny_vae
    rng = np.random.default_rng(0)
    for i in range(11):
        path = tmp_path / "imgs" / f"c{i % 3}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    overrides = ["data.dataset=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.image_size=16",
                 f"data.vae.weights={vae_root / 'vae.safetensors'}", f"data.vae.config_json={vae_root / 'config.json'}",
                 "data.vae.shard_size=3", "data.vae.batch_size=2", "data.vae.device=cpu", "data.vae.sample=true"]
    runs = {w: FanoutParams(stage="encode-latents", out=str(tmp_path / f"w{w}"), overrides=overrides,
                            dask=DaskParams(address=clusters[w])) for w in (1, 2)}
    results = {w: fanout(p) for w, p in runs.items()}
    assert results[1]["num_shards"] == 4 and results[2]["computed"] == list(range(4))
    assert len(results[2]["worker_pids"]) == 2
    assert_same_files(runs[1], runs[2])
    latents = build_dataset(runs[1].config().data.model_copy(update={"dataset": "latents", "root": str(tmp_path / "w2")}))
    assert len(latents) == 11 and tuple(latents[0][0].shape) == (4, 8, 8)


def test_bad_parameters_fail_before_any_cluster(tmp_path):
    with pytest.raises(ValueError, match="dask.address='localhost'"):
        DaskParams(address="localhost")
    with pytest.raises(ValueError, match="sample.rank=1"):
        FanoutParams(stage="sample", out=str(tmp_path), sample=SampleStageConfig(rank=1, world_size=2))
    bad = FanoutParams(stage="sample", out=str(tmp_path), overrides=SAMPLE_OVERRIDES,
                       sample=SAMPLE.model_copy(update={"num_samples": 5}))
    with pytest.raises(ValueError, match="num_samples=5"):
        plan(bad)
    with pytest.raises(ValueError, match="already encoded"):
        plan(FanoutParams(stage="encode-latents", out=str(tmp_path),
                          overrides=["data.dataset=latents", f"data.root={tmp_path}"]))


def test_fanout_is_a_deployment_with_a_described_form():
    from flows.deployments import DEPLOYMENTS
    from flows.fanout import fanout as fanout_flow

    assert DEPLOYMENTS["fanout"][0] == "flows.fanout.fanout"
    for model in (FanoutParams, DaskParams):
        undocumented = [name for name, field in model.model_fields.items() if not field.description]
        assert not undocumented, f"{model.__name__} fields without a description (UI form): {undocumented}"
    schema = fanout_flow.parameters.model_dump()["definitions"]
    assert schema["DaskParams"]["properties"]["address"]["description"].startswith("Address of a running Dask")
