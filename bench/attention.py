"""Benchmark: the cost of group attention.

Prints progress lines, then as its LAST line one JSON object:
  step_time_ratio      train-step time at N=4 / at N=1, same number of images per step
  flop_ratio           theoretical training FLOPs at N=4 / at N=1 (groupdiff.models.flops_per_image)
  sdpa_peak_mem_ratio  peak memory of group attention through F.scaled_dot_product_attention / through an
                       explicit (N*L)^2 score matrix, forward + backward, at a large N*L
Target: step_time_ratio within 10% of flop_ratio; sdpa_peak_mem_ratio well below 1.

Model: on GPU the real SiT-S/2 (12 blocks, 256 tokens, bf16 autocast); on CPU a documented smaller
model with SiT-S/2's width, heads and token count but 4 blocks (same attention share per block, so the
same flop_ratio; a full S/2 step takes tens of seconds on 2 cores). Memory on CPU is the growth of the
process's peak RSS over its value just before the attention call (Linux: the high-water mark is reset
through /proc/self/clear_refs, each variant in a fresh subprocess); on GPU ``torch.cuda.max_memory_allocated``.
Step times alternate N=1 and N=4 steps so that load from other processes hits both alike.

Usage: .venv/bin/python bench/attention.py [--device cpu|cuda] [--images 8] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from groupdiff.models import SiT, flops_per_image


def build(device: str, depth: int) -> SiT:
    """SiT-S/2 geometry (hidden 384, 6 heads, patch 2 on 32x32x4 latents = 256 tokens)."""
    torch.manual_seed(0)
    return SiT(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=depth, num_heads=6,
               num_classes=1000, learn_sigma=True, max_group_size=16).to(device)


def make_train_step(model: SiT, images: int, group_size: int, device: str):
    """A closure running forward + MSE loss + backward + AdamW step on ``images`` images in groups of N."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(images, 4, 32, 32, device=device)
    t = torch.rand(images // group_size, device=device).repeat_interleave(group_size)
    y = torch.randint(0, 1000, (images,), device=device)
    target = torch.randn(images, 8, 32, 32, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.mse_loss(model(x, t, y, group_size=group_size).float(), target)
        loss.backward()
        opt.step()

    return step


def timed(step, device: str) -> float:
    """Wall seconds of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_train_steps(model: SiT, images: int, group_size: int, repeats: int, device: str) -> tuple[float, float]:
    """Median step seconds at N=1 and at N=group_size, measured alternately after two warm-up steps each."""
    step_1 = make_train_step(model, images, 1, device)
    step_n = make_train_step(model, images, group_size, device)
    for _ in range(2):
        step_1(), step_n()
    times_1, times_n = [], []
    for _ in range(repeats):
        times_1.append(timed(step_1, device))
        times_n.append(timed(step_n, device))
    return statistics.median(times_1), statistics.median(times_n)


def attention_once(kind: str, tokens: int, device: str, heads: int = 6, head_dim: int = 64) -> float:
    """Run one forward+backward of attention over ``tokens`` tokens; return peak extra memory in bytes."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(1, heads, tokens, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS high-water mark to the current RSS
            f.write("5")
        base = _peak_rss()
    if kind == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:  # the explicit (T x T) score matrix a naive implementation materialises
        scores = (q @ k.transpose(-2, -1)) * head_dim**-0.5
        out = scores.softmax(dim=-1) @ v
    out.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    return float(_peak_rss() - base)


def _peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def peak_memory(kind: str, tokens: int, device: str) -> float:
    """Peak extra memory of one attention variant, measured in a fresh process on CPU (RSS is monotonic)."""
    if device == "cuda":
        return attention_once(kind, tokens, device)
    code = (
        "import torch, sys; sys.path.insert(0, 'bench'); torch.set_num_threads(2);"
        f"from attention import attention_once; print(attention_once({kind!r}, {tokens}, 'cpu'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=0, help="images per step (default: 8 on CPU, 64 on GPU)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mem-group-size", type=int, default=16, help="N for the memory comparison (N*L tokens)")
    args = parser.parse_args()
    device = args.device
    on_gpu = device == "cuda"
    depth = 12 if on_gpu else 4
    images = args.images or (64 if on_gpu else 8)
    if images % args.group_size:
        raise SystemExit(f"--images {images} is not divisible by --group-size {args.group_size}")

    model = build(device, depth)
    n = args.group_size
    t1, tn = time_train_steps(model, images, n, args.repeats, device)
    print(f"train step ({images} images, depth {depth}, {device}): N=1 {t1 * 1e3:.1f} ms, N={n} {tn * 1e3:.1f} ms",
          flush=True)
    flop_ratio = flops_per_image(model, n) / flops_per_image(model, 1)

    tokens = args.mem_group_size * model.x_embedder.num_patches
    mem_sdpa = peak_memory("sdpa", tokens, device)
    mem_explicit = peak_memory("explicit", tokens, device)
    print(f"attention over {tokens} tokens: SDPA {mem_sdpa / 2**20:.1f} MiB, explicit {mem_explicit / 2**20:.1f} MiB",
          flush=True)

    result = {
        "device": device,
        "model": f"SiT-S/2 geometry, depth {depth}",
        "images_per_step": images,
        "group_size": n,
        "step_time_n1_s": round(t1, 5),
        "step_time_nN_s": round(tn, 5),
        "step_time_ratio": round(tn / t1, 4),
        "flop_ratio": round(flop_ratio, 4),
        "step_vs_flop_rel_diff": round(abs(tn / t1 - flop_ratio) / flop_ratio, 4),
        "mem_tokens": tokens,
        "sdpa_peak_mem_bytes": mem_sdpa,
        "explicit_peak_mem_bytes": mem_explicit,
        "sdpa_peak_mem_ratio": round(mem_sdpa / max(mem_explicit, 1.0), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
