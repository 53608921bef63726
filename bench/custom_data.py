"""Benchmark: does the pipeline learn a dataset that is not the built-in one? (issue 13)

A user's path, end to end, on the embedded default: a generated ImageFolder of 4 shape classes (circle, square,
triangle, stripes; each image a random bright colour on a dark noisy background at a random size and position,
so colour says nothing about the class and a model has to draw the shape) -> ``groupdiff ingest`` (a dataset
version) -> ``groupdiff run --set pipeline.dataset=shapes`` (baseline and GroupDiff-l trained on the version,
scored in its ``data`` space) -> per variant ``fd_data`` with its interval and ``class_agreement``, beside the
real-data floor (held-out images of the version scored the same way) and the data-space classifier's accuracy
on held-out images. The class grids (one row per class) are copied next to the JSON.

Prints progress, then as its LAST line one JSON object.
Usage: .venv/bin/python bench/custom_data.py [--per-class 600] [--steps N] [--samples N] [--out DIR]
       [--results docs/results/custom-data]
"""
from __future__ import annotations

import argparse
import colorsys
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "square", "triangle", "stripes")
SOURCE_SIDE = 32  # generated images; ingest crops and resizes them to --image-size


def log(message: str) -> None:
    print(f"[bench custom-data] {message}", file=sys.stderr, flush=True)


def shape_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` RGB image of class ``label`` (see the module docstring)."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    r = size * rng.uniform(0.25, 0.36)
    cy, cx = size / 2 + rng.uniform(-size / 10, size / 10, 2)
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    elif label == 1:
        mask = (abs(yy - cy) < r * 0.85) & (abs(xx - cx) < r * 0.85)
    elif label == 2:  # apex up
        top, bottom = cy - r, cy + r * 0.8
        mask = (yy > top) & (yy < bottom) & (abs(xx - cx) < (yy - top) / (bottom - top) * r)
    else:
        mask = ((xx // (size / 8)) % 2 == 0) & (abs(yy - cy) < r * 1.1) & (abs(xx - cx) < r * 1.1)
    colour = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0))) * 255
    image = 25 + rng.normal(0, 8, (size, size, 3)) + mask[..., None] * (colour - 25)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_shapes(root: Path, per_class: int, seed: int = 0) -> Path:
    """The ImageFolder ``root/<class>/<i>.png``; the same arguments always write the same bytes."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(shape_image(label, SOURCE_SIDE, rng)).save(root / name / f"{i:05d}.png")
    return root


def groupdiff(*args: str) -> str:
    """Run a ``groupdiff`` command as a user would (its console output goes to ours); returns its stdout."""
    log("groupdiff " + " ".join(args))
    done = subprocess.run([sys.executable, "-m", "infra.cli", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    sys.stderr.write(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"groupdiff {args[0]} exited with {done.returncode}")
    return done.stdout


def scores(out: Path) -> dict[str, dict]:
    """Each variant's score record of the run under ``out`` (``work/scores/<digest>/metrics.json``)."""
    found = {}
    for path in sorted(out.glob("work/scores/*/metrics.json")):
        record = json.loads(path.read_text())
        found[record["variant"]] = record
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=600, help="generated images per class")
    parser.add_argument("--image-size", type=int, default=16, help="ingest's --image-size (the tiny preset's is 16)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--samples", type=int, default=None, help="samples per variant (default: the pipeline's)")
    parser.add_argument("--out", default=None, help="output folder of the run (default: a temporary one)")
    parser.add_argument("--results", default=None, help="copy the JSON and the class grids here")
    args = parser.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="groupdiff-custom-data-")).resolve()
    src = write_shapes(out / "source", args.per_class)
    log(f"wrote {args.per_class * len(CLASSES)} images to {src}")
    started = time.perf_counter()
    groupdiff("ingest", str(src), "--name", "shapes", "--image-size", str(args.image_size), "--out", str(out),
              "--embedded")
    ingest_s = time.perf_counter() - started
    run = ["run", "--out", str(out), "--set", "pipeline.dataset=shapes"]
    if args.steps:
        run += ["--set", f"pipeline.train_steps={args.steps}"]
    if args.samples:
        run += ["--set", f"pipeline.num_samples={args.samples}"]
    groupdiff(*run)
    run_s = time.perf_counter() - started - ingest_s
    records = scores(out)
    any_record = next(iter(records.values()))
    result = {
        # the version's classes are its sorted folder names: the grids' rows, top to bottom
        "images": args.per_class * len(CLASSES), "classes": sorted(CLASSES), "image_size": args.image_size,
        "steps": args.steps, "samples": args.samples, "ingest_seconds": round(ingest_s, 1), "run_seconds": round(run_s, 1),
        "variants": {v: {k: r["metrics"].get(k) for k in ("fd_data", "fd_data_ci_low", "fd_data_ci_high",
                                                            "class_agreement", "precision_data", "recall_data")}
                     for v, r in records.items()},
        "floor": {k: any_record["floor"].get(k) for k in ("fd_data", "class_agreement", "precision_data", "recall_data")},
        "floor_info": any_record["floor_info"], "classifier": any_record["classifier"],
    }
    if args.results:
        target = ROOT / args.results
        target.mkdir(parents=True, exist_ok=True)
        (target / "result.json").write_text(json.dumps(result, indent=1))
        for grid in sorted((out / "grids").glob("*.png")):
            shutil.copy2(grid, target / f"grid-{grid.name}")
        log(f"results and class grids in {target}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
