"""Benchmark: can the data path feed training? (issue 13)

1. **Shard formats** (the choice of ``groupdiff/data/sharded.py``): random reads by index, as group batches do,
   from our ``.npy`` shards (memory-mapped), from ``litdata`` (``StreamingDataset[i]``), and ``webdataset``'s
   sequential read (it has no random access); ``mosaicml-streaming`` is recorded as not installable here.
2. **Delivered**: images/s the training step loader (``groupdiff.train.loader``: the real epoch plans of a
   GroupDiff-l run, class-neighbour groups drawn across the whole set) delivers from a version of ``--items``
   generated 64 px images and from their latents (4 x 8 x 8), local and from the S3 server (SeaweedFS, started
   here on free ports of 127.0.0.1), with 1 and 2 workers; S3 once cold (shards fetched on first use) and once
   warm. Each measurement runs in its own process, whose peak RSS (itself + its workers) is reported, at
   ``--items`` and at a quarter of it: memory per rank should not grow with the set.
3. **Consumed**: the trainer's own images/s (compute only, as it logs them) on the tiny preset and on SiT-S/2,
   with in-memory data of each preset's item shape.
``data_headroom`` = delivered / consumed (tiny: 64 px pixels, SiT-S/2: latents; 2 workers, S3 cold), target >= 3.

Prints progress lines, then as its LAST line one JSON object.
Usage: .venv/bin/python bench/data.py [--items 20000] [--steps 40] [--batch 64] [--skip-s3] [--skip-formats]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIDE, CLASSES, SHARD = 64, 10, 2048
HEADROOM_TARGET = 3.0


def log(message: str) -> None:
    print(f"[bench data] {message}", file=sys.stderr, flush=True)


def smooth_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 3, 64, 64) images (upsampled 8x8 noise: compressible like photos) and labels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    return small.repeat(8, axis=2).repeat(8, axis=3), rng.integers(0, CLASSES, n)


def write_versions(root: Path, n: int) -> dict[str, Path]:
    """A pixel version and a latent version of ``n`` items, written in blocks (never all in memory)."""
    from groupdiff.data.sharded import ShardWriter

    names = [f"c{i}" for i in range(CLASSES)]
    out = {"pixels": root / f"pixels-{n}", "latents": root / f"latents-{n}"}
    pixels = ShardWriter(out["pixels"], "pixels", (3, SIDE, SIDE), names, SHARD)
    latents = ShardWriter(out["latents"], "latents", (4, SIDE // 8, SIDE // 8), names, SHARD)
    for start in range(0, n, SHARD):
        images, labels = smooth_images(min(SHARD, n - start), seed=start)
        pixels.add(images, labels)
        latents.add(np.random.default_rng(start).standard_normal((len(images), 4, 8, 8)).astype(np.float32), labels)
    for writer in (pixels, latents):
        writer.close({"generated": n}, {"bench": "data"})
    return out


def upload(store_root: str, folder: Path) -> str:
    """Publish a version folder to ``store_root`` (manifest last); returns its URI."""
    from registry.stores import open_store

    uri = f"{store_root}/bench-data/{folder.name}"
    store = open_store(uri)
    for path in sorted(folder.iterdir(), key=lambda p: p.name == "dataset.json"):
        store.put_file(path.name, path)
    return uri


# -- 1. formats ---------------------------------------------------------------------------------------------

def _litdata_item(i: int) -> dict:
    images, labels = smooth_images(1, seed=i)
    return {"x": images[0], "y": int(labels[0])}


def formats(root: Path, n: int) -> dict[str, float | str]:
    """Random-read items/s of npy shards and litdata, sequential items/s of webdataset, on ``n`` 64 px images."""
    from groupdiff.data.sharded import ShardWriter, ShardedDataset

    order = np.random.default_rng(0).permutation(n)
    writer = ShardWriter(root / "fmt-npy", "pixels", (3, SIDE, SIDE), ["c"] * CLASSES, SHARD)
    for i in range(n):
        item = _litdata_item(i)
        writer.add(item["x"][None], [item["y"]])
    writer.close({}, {})
    npy = ShardedDataset(root / "fmt-npy")
    out: dict[str, float | str] = {"format_items": n}
    t0 = time.perf_counter()
    for i in order:
        npy.rows(np.asarray([i]))
    out["npy_random_items_per_s"] = n / (time.perf_counter() - t0)
    try:
        import litdata
        import webdataset
    except ImportError as exc:
        out["litdata_webdataset"] = f"not installed ({exc}); pip install litdata webdataset"
        return out
    litdata.optimize(fn=_litdata_item, inputs=list(range(n)), output_dir=str(root / "fmt-lit"),
                     chunk_bytes="24MB", num_workers=1, mode="overwrite")
    lit = litdata.StreamingDataset(str(root / "fmt-lit"))
    t0 = time.perf_counter()
    for i in order:
        lit[int(i)]
    out["litdata_random_items_per_s"] = n / (time.perf_counter() - t0)
    pattern = str(root / "fmt-wds-%05d.tar")
    with webdataset.ShardWriter(pattern, maxcount=SHARD, verbose=0) as sink:
        for i in range(n):
            item = _litdata_item(i)
            sink.write({"__key__": f"{i:08d}", "npy": item["x"], "cls": item["y"]})
    shards = sorted(str(p) for p in root.glob("fmt-wds-*.tar"))
    t0 = time.perf_counter()
    count = sum(1 for _ in webdataset.WebDataset(shards, shardshuffle=False).decode())
    out["webdataset_sequential_items_per_s"] = count / (time.perf_counter() - t0)
    out["mosaicml_streaming"] = "not installable here: requires numpy<2.2 (the project pins numpy>=2.2)"
    return out


# -- 2. delivered (one process per measurement) ----------------------------------------------------------------

def deliver(root: str, kind: str, workers: int, steps: int, batch: int, cache: str) -> dict[str, float]:
    """Items/s of the step loader over ``steps`` steps of a GroupDiff-l plan (first step = warm-up, excluded)."""
    import torch

    from groupdiff.config import load_preset
    from groupdiff.data.datasets import build_dataset
    from groupdiff.train.data import EpochPlans, class_neighbours
    from groupdiff.train.loader import step_loader

    dataset = "imagefolder" if kind == "pixels" else "latents"
    config = load_preset("tiny-fmnist", [f"data.dataset={dataset}", f"data.root={root}", f"data.image_size={SIDE}",
                                         f"data.cache_dir={cache}", f"train.global_batch_images={batch}",
                                         "train.variant=groupdiff-l", "train.group_size=4", "train.group_ratio=0.5"])
    source = build_dataset(config.data)
    labels = torch.as_tensor(source.labels)
    plans = EpochPlans(config, len(labels), {"neighbours": class_neighbours(labels.numpy(), 3, 0)})
    loader = step_loader(source, plans, 0, 0, steps, 0, 1, workers, 2)
    started, seen = None, 0
    for i, (_, _, _, x0) in enumerate(loader):
        if i == 0:
            started = time.perf_counter()
            continue
        seen += len(x0)
    rate = seen / (time.perf_counter() - started)
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"items_per_s": rate, "peak_rss_mib": rss / 1024}


def measure_delivery(root: str, kind: str, workers: int, args, cache: str) -> dict[str, float]:
    """:func:`deliver` in a fresh process (clean peak RSS)."""
    cmd = [sys.executable, __file__, "--_deliver", json.dumps([root, kind, workers, args.steps, args.batch, cache])]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"delivery measurement failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- 3. consumed -----------------------------------------------------------------------------------------------

def consumed(preset: str, steps: int, overrides: list[str]) -> float:
    """The trainer's images/s (median of its logging windows after the first) with in-memory data of the
    preset's item shape."""
    import statistics

    import torch

    from groupdiff.config import load_preset
    from groupdiff.train.trainer import train

    config = load_preset(preset, [f"train.steps={steps}", "train.log_every=2", f"train.checkpoint_every={steps}",
                                  "train.probe_every=0", *overrides])
    n = max(4 * config.train.global_batch_images, 256)
    m = config.model
    data = (torch.randn(n, m.in_channels, m.input_size, m.input_size), torch.randint(0, m.num_classes, (n,)))
    with tempfile.TemporaryDirectory(prefix="bench-data-") as run_dir:
        train(config, run_dir, data=data)
        rates = [json.loads(line)["metrics"]["images_per_s"]
                 for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return statistics.median(rates[1:])


def start_s3(state: Path):
    """SeaweedFS alone (the stack's S3 service) on free ports; returns (config, client env)."""
    from groupdiff.ports import free_ports
    from infra.config import SeaweedPorts, StackConfig
    from infra.stack import client_env, up

    internal = tuple(SeaweedPorts.model_fields)
    ports = free_ports(1 + len(internal))
    config = StackConfig(state_dir=state, services=["s3"], s3_port=ports[0],
                         s3_internal_ports=SeaweedPorts(**dict(zip(internal, ports[1:]))))
    up(config, echo=log)
    return config, client_env(config)


def deliveries(versions: dict[str, dict[str, str]], args, tmp: Path) -> dict[str, dict[str, float]]:
    """Every delivery measurement: (kind, where, workers, cold/warm) -> items/s and peak RSS."""
    out = {}
    for kind in ("pixels", "latents"):
        for where, root in versions[kind].items():
            for workers in (1, 2):
                cache = str(tmp / f"cache-{kind}-{where}-{workers}")
                for pass_ in (("cold", "warm") if where.startswith("s3") else ("local",)):
                    key = f"{kind}/{where}/w{workers}/{pass_}"
                    out[key] = measure_delivery(root, kind, workers, args, cache)
                    log(f"{key}: {out[key]['items_per_s']:,.0f} items/s, peak RSS {out[key]['peak_rss_mib']:.0f} MiB")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=40, help="loader steps per delivery measurement")
    parser.add_argument("--batch", type=int, default=64, help="global batch images of the delivery measurement")
    parser.add_argument("--format-items", type=int, default=4000)
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--skip-formats", action="store_true")
    parser.add_argument("--_deliver", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._deliver:
        print(json.dumps(deliver(*json.loads(args._deliver))))
        return 0
    import os

    os.environ.setdefault("GROUPDIFF_STORE_FACTORY", "registry.stores:open_store")
    result: dict = {"items": args.items, "side": SIDE, "batch": args.batch, "steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_formats:
            result["formats"] = formats(tmp, args.format_items)
            log(f"formats: {result['formats']}")
        sizes = {"full": args.items, "quarter": args.items // 4}
        folders = {size: write_versions(tmp, n) for size, n in sizes.items()}
        versions = {kind: {f"local-{size}": str(folders[size][kind]) for size in sizes} for kind in ("pixels", "latents")}
        stack = None
        try:
            if not args.skip_s3:
                (tmp / "stack").mkdir()
                stack, env = start_s3(tmp / "stack")
                os.environ.update(env)
                for kind in versions:
                    versions[kind]["s3-full"] = upload(env["GROUPDIFF_STORE_ROOT"], folders["full"][kind])
            result["delivered"] = deliveries(versions, args, tmp)
        finally:
            if stack is not None:
                from infra.stack import down

                down(stack, echo=log)
    result.update(summary(result, args))
    print(json.dumps(result))
    return 0


def summary(result: dict, args) -> dict:
    """Consumption of the two presets, the headroom and the RSS growth from a quarter of the set to all of it."""
    tiny = consumed("tiny-fmnist", 12, [])
    log(f"consumed: tiny-fmnist {tiny:.0f} images/s")
    sit = consumed("sit-s2", 6, ["train.global_batch_images=32", "train.group_ratio=0.5",
                                                      "train.precision=fp32", "train.zero_stage=0"])
    log(f"consumed: sit-s2 {sit:.1f} images/s")
    d = result["delivered"]
    where = "s3-full/w2/cold" if not args.skip_s3 else "local-full/w2/local"
    rss = {k: v["peak_rss_mib"] for k, v in d.items()}
    return {
        "consumed_tiny_images_per_s": tiny, "consumed_sit_s2_images_per_s": sit, "headroom_from": where,
        "data_headroom_tiny": d[f"pixels/{where}"]["items_per_s"] / tiny,
        "data_headroom_sit_s2": d[f"latents/{where}"]["items_per_s"] / sit,
        "headroom_target": HEADROOM_TARGET,
        "rss_growth_quarter_to_full_mib": max(rss[f"{k}/local-full/w{w}/local"] - rss[f"{k}/local-quarter/w{w}/local"]
                                             for k in ("pixels", "latents") for w in (1, 2)),
    }


if __name__ == "__main__":
    sys.exit(main())
