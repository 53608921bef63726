"""Benchmark: the GPU path in one prepared run (issue 14). Prints progress, then as its LAST line one JSON object.

Run on a machine with a CUDA GPU (about 5-8 minutes on one H100/H200-class GPU; every piece has its own
time budget and a failing piece is reported in ``errors`` without stopping the others):

    .venv/bin/python bench/gpu.py [--batch 32] [--out docs/results/gpu.json]

Without a GPU it prints why and exits with status 3 (the last line is still one JSON object).
``--toy --allow-cpu`` runs every piece at toy size on the CPU (a check of the code, not a measurement).

Pieces (keys of the JSON object):
  train_eager / train_compiled   SiT-XL/2 (``groupdiff.models.SiT_models``, 256 tokens = 256 px through the
                                 SD-VAE) forward+backward under bf16 autocast, ``--batch`` images of N = 1:
                                 images/s and MFU = images/s x 3 x F / peak, with F = forward FLOPs per image
                                 (``flops_per_image``, 2 FLOPs per multiply-add: 236.8 GFLOPs for SiT-XL/2,
                                 the DiT paper's 118.6 GFLOPs counted in multiply-adds) and the GPU's dense
                                 bf16 peak (table below, or ``--peak-tflops``); compiled = ``torch.compile``
                                 (its compile time reported apart). Peak memory per run.
  group_attention                the same fwd+bwd on 16 images laid out as N = 1, 4 and 16 (16, 4, 1 groups):
                                 peak memory and images/s; SDPA keeps memory linear in N x 256 tokens.
  zero2_step                     one DeepSpeed ZeRO-2 optimizer step on 1 GPU (the trainer's own
                                 ``deepspeed_config`` and AdamW, bf16, NCCL, ``--batch`` images): images/s,
                                 peak memory.
  faiss_gpu                      exact inner-product search (``IndexFlatIP`` on the GPU) over 1,000,000 x 768
                                 unit vectors, 10,000 queries, k = 100: queries/s; ``available: false`` when
                                 the ``faiss`` module has no GPU support (faiss-cpu installed).
  inception                      torch-fidelity's InceptionV3 (random weights; the cost does not depend on
                                 them) on 256x256 uint8 images in full fp32 (TF32 off, as ``groupdiff score``):
                                 images/s at batch 250.
  sampling                       GroupDiff-l-4 with the released settings (SDE Euler, cfg 2.585, interval
                                 [0.25, 0.75]) on SiT-XL/2 through ``groupdiff.sample.generate`` (fp32, what
                                 ``groupdiff sample`` runs), ``--sample-steps`` steps on 64 images; images/s
                                 scaled to 250 steps. No VAE decode (no weights here; add ~ms/image).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NO_GPU_EXIT = 3
# dense bf16 peak, TFLOP/s (vendor datasheets, without sparsity); matched against torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.5, "H100": 756.5,
                    "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.2}


def log(msg: str) -> None:
    print(f"[gpu bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_tflops(name: str, override: float | None) -> float | None:
    """The GPU's dense bf16 peak: ``override`` or the first table key contained in the device name."""
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def peak_memory(device: str, out: dict):
    """Peak allocated GiB of the block on CUDA (``None`` on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield
    out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda") else None


def sit(args, device: str):
    """SiT-XL/2 (or a toy SiT on ``--toy``) with random weights, on ``device``."""
    from groupdiff.models import SiT_models, build_model
    from groupdiff.config import load_preset

    if args.toy:
        config = load_preset("sit-xl2", ["model.name=custom", "model.depth=2", "model.hidden_size=64",
                                         "model.num_heads=4", "model.patch_size=4", "model.input_size=16"])
        return build_model(config.model).to(device), config
    config = load_preset("sit-xl2")
    assert config.model.name in SiT_models
    return build_model(config.model).to(device), config


def inputs(model, config, images: int, device: str, group_size: int = 1):
    c, s = config.model.in_channels, config.model.input_size
    x = torch.randn(images, c, s, s, device=device)
    t = torch.rand(images // group_size, device=device).repeat_interleave(group_size)
    y = torch.randint(0, config.model.num_classes, (images,), device=device)
    return x, t, y


def fwd_bwd_rate(model, config, images: int, group_size: int, device: str, seconds: float, warmup: int = 2) -> dict:
    """images/s of forward+backward (bf16 autocast on CUDA) at ``images`` per call, timed for ~``seconds``."""
    x, t, y = inputs(model, config, images, device, group_size)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model.train()

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype == torch.bfloat16):
            out = model(x, t, y, group_size=group_size)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    result: dict = {}
    with peak_memory(device, result):
        for _ in range(warmup):
            step()
        sync(device)
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            step()
            calls += 1
            sync(device)
        elapsed = time.perf_counter() - started
    result.update(images_per_s=round(calls * images / elapsed, 3), calls=calls, images_per_call=images,
                  group_size=group_size)
    return result


def piece_train(args, device: str, peak: float | None) -> dict:
    from groupdiff.models import flops_per_image

    model, config = sit(args, device)
    flops = flops_per_image(model)
    out = {"model": config.model.name if not args.toy else "toy", "fwd_gflops_per_image": round(flops / 1e9, 3),
           "peak_bf16_tflops": peak}
    eager = fwd_bwd_rate(model, config, args.batch, 1, device, args.seconds)
    out["eager"] = eager
    if not args.no_compile:
        started = time.perf_counter()
        compiled = torch.compile(model)
        first = fwd_bwd_rate(compiled, config, args.batch, 1, device, 0.0, warmup=1)  # compiles
        out["compile_s"] = round(time.perf_counter() - started, 1)
        del first
        out["compiled"] = fwd_bwd_rate(compiled, config, args.batch, 1, device, args.seconds)
    for key in ("eager", "compiled"):
        if key in out and peak:
            out[key]["mfu"] = round(out[key]["images_per_s"] * 3 * flops / (peak * 1e12), 4)
    return out


def piece_group_attention(args, device: str) -> dict:
    model, config = sit(args, device)
    images = 16
    return {f"N{n}": fwd_bwd_rate(model, config, images, n, device, args.seconds / 2) for n in (1, 4, 16)}


def piece_zero2(args, device: str) -> dict:
    from groupdiff.train.ds_config import deepspeed_config
    from groupdiff.train.launch import ensure_rendezvous_env, init_distributed
    from groupdiff.train.optim import build_optimizer

    dev_type = torch.device(device).type
    rank, world, local_rank = ensure_rendezvous_env()
    init_distributed(dev_type, local_rank)
    import deepspeed

    model, config = sit(args, device)
    train = config.train.model_copy(update={"zero_stage": 2, "global_batch_images": args.batch, "micro_batch_images": 0,
                                            "variant": "baseline", "group_size": 1})
    ds = deepspeed_config(train, world, dev_type)
    engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, train, dev_type), config=ds)
    x, t, y = inputs(model, config, args.batch, str(engine.device))
    dtype = torch.bfloat16 if ds["bf16"]["enabled"] else torch.float32
    result: dict = {"bf16": ds["bf16"]["enabled"], "images_per_step": args.batch}

    def step():
        loss = engine(x.to(dtype), t, y).float().square().mean()
        engine.backward(loss)
        engine.step()

    with peak_memory(device, result):
        step()
        sync(device)
        steps, started = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - started < args.seconds:
            step()
            steps += 1
            sync(device)
        elapsed = time.perf_counter() - started
    result.update(images_per_s=round(steps * args.batch / elapsed, 3), steps=steps)
    return result


def piece_faiss(args, device: str) -> dict:
    import faiss
    import numpy as np

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0 and not args.toy:
        return {"available": False, "reason": "the installed faiss has no GPU support (pip install -e .[gpu] after "
                "uninstalling faiss-cpu)"}
    n, d, q, k = (1_000_000, 768, 10_000, 100) if not args.toy else (10_000, 64, 500, 10)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    rows = rng.choice(n, q, replace=False)
    xq = xb[rows]
    index = faiss.IndexFlatIP(d)
    if gpus:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    started = time.perf_counter()
    index.add(xb)
    add_s = time.perf_counter() - started
    index.search(xq[:100], k)  # warm-up
    started = time.perf_counter()
    _, ids = index.search(xq, k)
    search_s = time.perf_counter() - started
    self_hit = float((ids[:, 0] == rows).mean())  # each query is a stored vector: exact search finds itself first
    return {"available": bool(gpus), "vectors": n, "dim": d, "queries": q, "k": k, "add_s": round(add_s, 3),
            "queries_per_s": round(q / search_s, 1), "gpu": bool(gpus), "self_hit": self_hit}


def piece_inception(args, device: str) -> dict:
    import numpy as np

    from groupdiff.metrics.inception import full_fp32, random_inception_extractor

    net = random_inception_extractor().to(device).eval()
    size, batch = (256, 250) if not args.toy else (64, 4)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    images = images.to(device)
    with torch.inference_mode(), full_fp32():
        net(images)
        sync(device)
        calls, started = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - started < args.seconds:
            net(images)
            calls += 1
            sync(device)
        elapsed = time.perf_counter() - started
    return {"images_per_s": round(calls * batch / elapsed, 2), "batch": batch, "image_size": size, "tf32": False}


def piece_sampling(args, device: str) -> dict:
    from groupdiff.sample.generate import class_balanced_labels, generate

    model, config = sit(args, device)
    images = 64 if not args.toy else 8
    steps = args.sample_steps
    sampler = config.sampler.model_copy(update={"num_steps": steps})
    labels = class_balanced_labels(images, min(config.model.num_classes, images // 4), 4)[:images]
    shape = (config.model.in_channels, config.model.input_size, config.model.input_size)
    generate(model, labels[:8], sampler.model_copy(update={"num_steps": 2}), config.guidance, shape, device=device)
    sync(device)
    started = time.perf_counter()
    generate(model, labels, sampler, config.guidance, shape, device=device)
    sync(device)
    elapsed = time.perf_counter() - started
    rate = images / elapsed
    return {"mode": config.guidance.mode, "group_size": config.guidance.group_size,
            "cfg_scale": config.guidance.cfg_scale, "interval": [config.guidance.interval_low, config.guidance.interval_high],
            "method": sampler.method, "steps_run": steps, "images": images, "images_per_s": round(rate, 4),
            "images_per_s_at_250_steps": round(rate * steps / 250, 5), "dtype": "float32", "vae_decode": False}


PIECES = ["train", "group_attention", "zero2_step", "faiss_gpu", "inception", "sampling"]


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per training call (SiT-XL/2 fwd+bwd, ZeRO-2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    parser.add_argument("--sample-steps", type=int, default=25, help="SDE steps actually run (scaled to 250)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU (MFU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--only", nargs="*", choices=PIECES, default=PIECES, help="run only these pieces")
    parser.add_argument("--out", default="", help="also write the JSON object to this file")
    parser.add_argument("--toy", action="store_true", help="toy sizes (a code check, not a measurement)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (with --toy) instead of refusing")
    return parser


def refuse_without_gpu(result: dict) -> int:
    """Say why there is nothing to measure (stderr, and the last line's JSON object); the exit status."""
    reason = ("no CUDA GPU visible (torch.cuda.is_available() is False): bench/gpu.py measures the GPU path "
              "and has nothing to measure here; run it on a machine with a GPU "
              "(or --toy --allow-cpu to check the code at toy size on the CPU)")
    print(f"bench/gpu.py: {reason}", file=sys.stderr, flush=True)
    print(json.dumps({**result, "status": "no_gpu", "reason": reason}))
    return NO_GPU_EXIT


def open_device(args, result: dict) -> tuple[str, float | None]:
    """The device to measure on and its bf16 peak (None on the CPU); its name and memory go into ``result``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    peak = peak_tflops(name, args.peak_tflops) if device == "cuda" else None
    result.update(device=name, status="ok", errors={})
    if device == "cuda":
        result["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return device, peak


def run_pieces(args, device: str, peak: float | None, result: dict) -> None:
    """The ``--only`` pieces in order, each figure (or error) into ``result``; a failed piece does not stop the rest."""
    pieces = {"train": lambda: piece_train(args, device, peak),
              "group_attention": lambda: piece_group_attention(args, device),
              "zero2_step": lambda: piece_zero2(args, device),
              "faiss_gpu": lambda: piece_faiss(args, device),
              "inception": lambda: piece_inception(args, device),
              "sampling": lambda: piece_sampling(args, device)}
    for key in args.only:
        log(f"{key} ...")
        t0 = time.perf_counter()
        try:
            result[key] = pieces[key]()
        except Exception as exc:  # noqa: BLE001 - one failed piece must not lose the others' figures
            result["errors"][key] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        log(f"{key} done in {time.perf_counter() - t0:.1f} s: {json.dumps(result.get(key))}")
        if key == "train" and not args.no_compile:
            torch._dynamo.reset()  # drop the compiled graphs (and the model they hold) before the next piece
        if device == "cuda":
            torch.cuda.empty_cache()


def emit(result: dict, out: str) -> None:
    """Write the result to ``out`` (when given) and print it as the LAST line."""
    text = json.dumps(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: dict = {"bench": "gpu", "torch": torch.__version__, "python": platform.python_version(), "toy": args.toy}
    if not torch.cuda.is_available() and not args.allow_cpu:
        return refuse_without_gpu(result)
    device, peak = open_device(args, result)
    torch.manual_seed(0)
    started = time.perf_counter()
    run_pieces(args, device, peak, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if result["errors"]:
        result["status"] = "partial"
    emit(result, args.out)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
