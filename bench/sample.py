"""Benchmark: cost of GroupDiff sampling vs baseline CFG, and scoring throughput vs torch-fidelity (issue 5).

Prints progress lines, then as its LAST line one JSON object.

Sampling (``groupdiff.sample.generate``, the core of ``groupdiff sample``, on the ``tiny-fmnist`` preset
model with random weights: the cost of a forward does not depend on the weights). All three modes use
the same sampler (the preset's ``ode-heun`` with ``--steps`` steps, default 10 = 19 velocity calls),
the same cfg scale with guidance at every step (interval [0, 1]) and the same images per call:
  baseline_images_per_s, l_images_per_s, f_images_per_s
  l_cost_ratio, f_cost_ratio   cost ratio = time per image relative to baseline CFG
                               (= baseline images/s / mode images/s); 1.0 = no extra cost
  paper_l_extra, paper_f_extra the paper's reported extra cost: 0.5 (N-1) for -l, (N-1) for -f
  l_flop_ratio, f_flop_ratio   the same ratios from model FLOPs (groupdiff.models.flops_per_image):
                               baseline CFG = 2 F(1) per image and step, -l = F(1) + F(N), -f = 2 F(N).
                               Load-independent; what the measured ratios should approach.
GroupDiff-l runs the conditional branch per image and only the unconditional one jointly over the
group, so its extra cost is the longer attention of one branch; on the tiny preset (64 tokens, MLPs
dominate) the ratio is near 1, far below the paper's ImageNet-scale figure. S_cross recording
(``groupdiff sample`` default for N > 1) is analysis, not sampling, and is timed separately:
  l_cost_ratio_with_s_cross    GroupDiff-l with the S_cross hooks of all layers on, vs baseline.

Scoring: ``score_images`` generated-side images (Fashion-MNIST train split, 32x32 grey) against as many
reference images (test split) with the same InceptionV3 weights file, cold (no cache on either side,
both extract features of both sets):
  ours_images_per_s    ``groupdiff.metrics.score.run`` -- exactly what ``groupdiff score --space
                       inception`` runs: one feature pass giving FID, sFID, IS, precision and recall
                       (default config: k=3, 1 IS split, Frechet method as ScoreConfig's default)
  theirs_images_per_s  torch-fidelity ``calculate_metrics(fid=True, isc=True, prc=True)`` on the same
                       images (torch Datasets of uint8 CHW tensors), same weights file, same batch size,
                       isc_splits=1, prc_neighborhood=3, cache=False
  features_ratio       ours / theirs (images/s; > 1 means ours is faster). Ours computes sFID on top.
  fid_ours / fid_theirs, is_*, precision_*, recall_*   the values, to show both computed the same thing.
images/s = score_images / wall seconds of the whole call (extractor construction, features of both
sets, all metrics). Where ours gains: on CPU the network runs channels-last (~1.4x per image); the
Fréchet trace is computed exactly in the N-dimensional sample space when N <= 2048 (torch-fidelity takes
eigenvalues of a 2048 x 2048 product, seconds per call); no DataLoader worker processes. At 50K samples
the network dominates, so the ratio tends to the per-image network speed-up (about 1 on a GPU).

No real Inception weights exist here: the bench saves torch-fidelity's ``FeatureExtractorInceptionV3``
with random weights whose batch-norm statistics are calibrated on a few Fashion-MNIST images (so
features and metrics have realistic magnitudes instead of vanishing) to a temp file and gives both
sides that path. Runs alternate (baseline, -l, -f, ... and ours, theirs, theirs, ours, ...) so that
load from other processes hits all alike; medians count. ``load_1min_before/after`` record the load.
One torch/BLAS thread by default (``--threads``): on a shared 2-core machine two OpenMP threads stall
whenever another process holds a core (measured: tiny-model forwards 4x slower at load 7 than with one
thread); both sides of every comparison run under the same setting.

Usage: .venv/bin/python bench/sample.py [--images 32] [--steps 10] [--repeats 4] [--score-images 128]
       [--score-repeats 2] [--threads 1] [--skip-sampling] [--skip-scoring]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

PRESET = "tiny-fmnist"
GROUP_SIZE = 4
PAPER_L_EXTRA = 0.5  # x (N - 1)
PAPER_F_EXTRA = 1.0  # x (N - 1)
L_TARGET, FEATURES_TARGET = 1.2, 1.0


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------- sampling


SAMPLING_VARIANTS = [("baseline", False), ("l", False), ("f", False), ("l", True)]  # (mode, S_cross hooks on)


def bench_sampling(images: int, steps: int, repeats: int) -> dict:
    """images/s of baseline CFG, GroupDiff-l-N, GroupDiff-f-N (and -l with S_cross hooks), alternated."""
    from groupdiff.sample.stage import load_model_and_config

    n = GROUP_SIZE
    if images % n:
        raise SystemExit(f"--images {images} is not a multiple of the group size {n}")
    model, config = load_model_and_config(None, PRESET, [f"sampler.num_steps={steps}"], init_seed=0)
    modes = guidance_modes(config.guidance, n)
    run = sampling_calls(model, config, modes, images, n)
    times = time_variants(run, config.sampler, repeats)
    med = {v: statistics.median(t) for v, t in times.items()}
    ips = {v: images / t for v, t in med.items()}
    return sampling_report(model, config, modes["baseline"].cfg_scale, steps, images, ips)


def guidance_modes(guidance, n: int) -> dict:
    """The preset's guidance at every step (interval [0, 1], cfg 2 where the preset has none) for baseline CFG,
    GroupDiff-l-N and GroupDiff-f-N."""
    guidance = guidance.model_copy(update={"interval_low": 0.0, "interval_high": 1.0})
    if guidance.cfg_scale == 1.0:
        guidance = guidance.model_copy(update={"cfg_scale": 2.0})  # guidance must run for a CFG comparison
    return {
        "baseline": guidance.model_copy(update={"mode": "baseline", "group_size": 1}),
        "l": guidance.model_copy(update={"mode": "groupdiff-l", "group_size": n}),
        "f": guidance.model_copy(update={"mode": "groupdiff-f", "group_size": n}),
    }


def sampling_calls(model, config, modes: dict, images: int, n: int):
    """``run(mode, s_cross, sampler)``: a no-argument call sampling ``images`` images (groups of ``n`` sharing a
    class) in that mode, with the S_cross hooks of all layers on when ``s_cross``."""
    from groupdiff.sample.attention_score import CrossAttentionRecorder
    from groupdiff.sample.generate import generate

    classes = config.model.num_classes
    labels = (torch.arange(images // n) % classes).repeat_interleave(n)  # groups share one class
    shape = (config.model.in_channels, config.model.input_size, config.model.input_size)

    def run(mode: str, s_cross: bool = False, sampler=config.sampler):
        g = modes[mode]

        def call():
            if s_cross:
                with CrossAttentionRecorder(model, images // n, n):
                    generate(model, labels, sampler, g, shape)
            else:
                generate(model, labels, sampler, g, shape)
        return call

    return run


def time_variants(run, sampler, repeats: int) -> dict[tuple[str, bool], list[float]]:
    """Seconds of each variant's call per round: one warm-up call each, then ``repeats`` rounds in a rotating
    order (so that load from other processes hits all alike)."""
    variants = SAMPLING_VARIANTS
    warm_up = sampler.model_copy(update={"num_steps": 1})
    for mode, s_cross in variants:  # one network call per variant: allocations, kernel selection
        run(mode, s_cross, warm_up)()
    times: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate the order each round
        for mode, s_cross in order:
            times[(mode, s_cross)].append(_timed(run(mode, s_cross)))
        print(f"sampling round {r + 1}/{repeats}: " + ", ".join(
            f"{m}{'+S' if s else ''} {times[(m, s)][-1]:.2f}s" for m, s in variants), flush=True)
    return times


def sampling_report(model, config, cfg_scale: float, steps: int, images: int, ips: dict) -> dict:
    """The measured images/s, the cost ratios against baseline CFG, the paper's figures and the FLOP ratios."""
    from groupdiff.models import flops_per_image

    n = GROUP_SIZE
    f1, fn = flops_per_image(model, 1), flops_per_image(model, n)
    base = ips[("baseline", False)]
    return {
        "sampler": f"{config.sampler.method} {steps} steps", "cfg_scale": cfg_scale,
        "group_size": n, "sample_images_per_call": images,
        "baseline_images_per_s": round(base, 2),
        "l_images_per_s": round(ips[("l", False)], 2),
        "f_images_per_s": round(ips[("f", False)], 2),
        "l_cost_ratio": round(base / ips[("l", False)], 4),
        "f_cost_ratio": round(base / ips[("f", False)], 4),
        "l_cost_ratio_with_s_cross": round(base / ips[("l", True)], 4),
        "paper_l_extra": PAPER_L_EXTRA * (n - 1), "paper_f_extra": PAPER_F_EXTRA * (n - 1),
        "l_flop_ratio": round((f1 + fn) / (2 * f1), 4), "f_flop_ratio": round(fn / f1, 4),
    }


# ---------------------------------------------------------------- scoring


def calibrated_random_inception(path: Path, calibration: np.ndarray) -> Path:
    """Save torch-fidelity's InceptionV3 with random weights and batch-norm statistics set on ``calibration``.

    Random init alone makes activations shrink layer by layer (pool features ~1e-7); one train-mode pass
    with cumulative batch-norm momentum sets every BN's running statistics to that batch's, so each
    layer's output is normalised and the features have realistic magnitudes. Tests/benchmarks only.
    """
    from torch import nn

    from groupdiff.metrics.inception import random_inception_extractor, to_nchw_uint8

    net = random_inception_extractor(seed=0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: after one batch, running stats = its stats
            module.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(to_nchw_uint8(calibration)))
    net.eval()
    torch.save(net.state_dict(), path)
    return path


class _Uint8Dataset(torch.utils.data.Dataset):
    """uint8 (3, H, W) tensors, what torch-fidelity's feature extractors take."""

    def __init__(self, images_nhwc: np.ndarray):
        from groupdiff.metrics.inception import to_nchw_uint8

        self.x = torch.from_numpy(to_nchw_uint8(images_nhwc))

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def bench_scoring(score_images: int, repeats: int, batch_size: int) -> dict:
    """Cold scoring throughput of ``groupdiff score`` vs torch-fidelity ``calculate_metrics`` (alternated)."""
    from groupdiff.data.fmnist import load_fmnist
    from groupdiff.metrics.npz import to_uint8_nhwc

    fake, _ = load_fmnist("train", 32, limit=score_images)
    real, _ = load_fmnist("test", 32, limit=score_images + 16)
    fake, real = to_uint8_nhwc(fake), to_uint8_nhwc(real)
    real, calibration = real[:score_images], real[score_images:]
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as folder:
        return _score_both(Path(folder), fake, real, calibration, repeats, batch_size)


def _score_both(tmp: Path, fake: np.ndarray, real: np.ndarray, calibration: np.ndarray, repeats: int,
                batch_size: int) -> dict:
    import torch_fidelity

    from groupdiff.metrics.npz import SampleBatch, write_samples_npz
    from groupdiff.metrics.score import ScoreConfig
    from groupdiff.metrics.score import run as run_score

    score_images = len(fake)
    weights = calibrated_random_inception(tmp / "weights-inception-random.pth", calibration)
    samples_path = write_samples_npz(tmp / "samples.npz", SampleBatch(fake, np.zeros(len(fake), np.int64)))
    reference_path = write_samples_npz(tmp / "reference.npz", SampleBatch(real))
    config = ScoreConfig(samples=str(samples_path), out=str(tmp / "metrics.json"), spaces=["inception"],
                         reference=str(reference_path), inception_weights=str(weights), cache_dir="",
                         batch_size=batch_size)
    results: dict[str, dict] = {}

    def ours():
        results["ours"] = run_score(config)["metrics"]

    def theirs():
        results["theirs"] = torch_fidelity.calculate_metrics(
            input1=_Uint8Dataset(fake), input2=_Uint8Dataset(real), cuda=False, fid=True, isc=True, prc=True,
            feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
            batch_size=batch_size, isc_splits=config.is_splits, prc_neighborhood=config.pr_k,
            cache=False, verbose=False,
        )

    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for r in range(repeats):
        order = [("ours", ours), ("theirs", theirs)]
        if r % 2:
            order.reverse()  # ours, theirs, theirs, ours, ...
        for name, fn in order:
            times[name].append(_timed(fn))
        print(f"scoring round {r + 1}/{repeats}: ours {times['ours'][-1]:.1f}s, theirs {times['theirs'][-1]:.1f}s",
              flush=True)
    ours_ips = score_images / statistics.median(times["ours"])
    theirs_ips = score_images / statistics.median(times["theirs"])
    o, t = results["ours"], results["theirs"]
    return {
        "score_images": score_images, "reference_images": score_images, "score_batch_size": batch_size,
        "fd_method": config.fd_method,
        "ours_images_per_s": round(ours_ips, 3), "theirs_images_per_s": round(theirs_ips, 3),
        "features_ratio": round(ours_ips / theirs_ips, 4),
        "fid_ours": round(o["fid"], 4), "fid_theirs": round(t["frechet_inception_distance"], 4),
        "sfid_ours": round(o.get("sfid", float("nan")), 4),
        "is_ours": round(o["is"], 4), "is_theirs": round(t["inception_score_mean"], 4),
        "precision_ours": round(o["precision"], 4), "precision_theirs": round(t["precision"], 4),
        "recall_ours": round(o["recall"], 4), "recall_theirs": round(t["recall"], 4),
    }


def main() -> None:
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # torch-fidelity's 4 loader workers
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per sampling call (multiple of 4)")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps, the same for every mode")
    parser.add_argument("--repeats", type=int, default=4, help="timed sampling rounds (all modes each)")
    parser.add_argument("--score-images", type=int, default=128, help="generated and reference images each")
    parser.add_argument("--score-repeats", type=int, default=2, help="timed scoring rounds (both sides each)")
    parser.add_argument("--score-batch-size", type=int, default=64, help="feature-extractor batch, both sides")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads for everything, both sides (0 = library defaults)")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-scoring", action="store_true")
    args = parser.parse_args()
    limits = nullcontext()
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        limits = threadpool_limits(args.threads)
    result: dict = {"device": "cpu", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "load_1min_before": round(os.getloadavg()[0], 2)}
    started = time.perf_counter()
    with limits:
        run_benchmarks(args, result)
    result["load_1min_after"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


def run_benchmarks(args: argparse.Namespace, result: dict) -> None:
    """The selected parts, results merged into ``result``."""
    if not args.skip_sampling:
        result.update(bench_sampling(args.images, args.steps, args.repeats))
        result["l_target_met"] = result["l_cost_ratio"] <= L_TARGET
    if not args.skip_scoring:
        result.update(bench_scoring(args.score_images, args.score_repeats, args.score_batch_size))
        result["features_target_met"] = result["features_ratio"] >= FEATURES_TARGET


if __name__ == "__main__":
    main()
