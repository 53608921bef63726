"""Real data end to end through the commands a user types (issue 13): a generated image folder with a corrupt and a
non-image file -> ``groupdiff ingest`` (latents with a tiny random AutoencoderKL, and pixels for the reference) ->
versions in the S3 server and the catalogue -> ``groupdiff train`` on 2 ranks with ZeRO-2 reading the latents from
S3 through DataLoader workers -> ``groupdiff sample`` (decoded by the VAE) -> ``groupdiff score`` against the pixel
version. The corrupt files are named, the run's config names the version, the catalogue resolves it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.builders import write_image_folder

pytestmark = pytest.mark.integration
MODEL = ["model.name=custom", "model.depth=1", "model.hidden_size=32", "model.num_heads=2", "model.patch_size=2",
         "model.input_size=8", "model.in_channels=4", "model.num_classes=3", "model.max_group_size=4",
         "train.global_batch_images=16", "train.group_size=4", "train.group_ratio=0.5", "train.zero_stage=2",
         "train.checkpoint_every=2", "train.probe_every=0", "train.num_threads=1", "data.num_workers=1"]


def _groupdiff(env: dict, *args: str) -> str:
    """Run the console script; returns stdout (the test fails with stderr when the command fails)."""
    exe = Path(sys.executable).parent / "groupdiff"
    done = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"groupdiff {' '.join(args)} failed:\n{done.stderr[-4000:]}"
    return done.stdout


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def test_ingest_then_train_two_ranks_from_s3_then_sample_and_score(stack_env, tiny_vae, random_inception_weights,
                                                                   tmp_path):
    env = {**os.environ, **stack_env}
    src = write_image_folder(tmp_path / "images", per_class=12)
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    _, vae_root = tiny_vae
    vae = str(vae_root / "folder")
    latents = json.loads(_groupdiff(env, "ingest", str(src), "--name", name, "--encode", "latents", "--vae", vae,
                                    "--on-corrupt", "skip", "--image-size", "16", "--shard-size", "10",
                                    "--out", str(tmp_path / "work")).strip().splitlines()[-1])
    assert sorted(latents["corrupt"]) == ["bag/truncated.png", "shoe/notes.txt"]
    assert latents["counts"] == {"bag": 12, "coat": 12, "shoe": 12} and latents["uri"].startswith("s3://")
    pixels = json.loads(_groupdiff(env, "ingest", str(src), "--name", f"{name}-px", "--on-corrupt", "skip",
                                   "--image-size", "16", "--out", str(tmp_path / "work")).strip().splitlines()[-1])

    run = tmp_path / "run"
    cache = tmp_path / "cache"
    _groupdiff(env, "train", "--preset", "tiny-fmnist", "--variant", "groupdiff-l", "--nproc", "2", "--steps", "2",
               "--out", str(run), *_sets(MODEL + ["data.dataset=latents", f"data.root={latents['uri']}",
                                                  f"data.cache_dir={cache}"]))
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["root"] == latents["uri"] and saved["train"]["zero_stage"] == 2
    assert (run / "checkpoints" / "latest").read_text() == "step_00000002"
    assert any(cache.rglob("items-00000.npy"))  # the shards came from the object store into the local cache

    samples = tmp_path / "samples"
    _groupdiff(env, "sample", "--checkpoint", str(run), "--out", str(samples), "--num-samples", "12",
               "--no-attention-score", *_sets([f"data.vae.weights={vae}", "sampler.num_steps=2",
                                               "guidance.mode=groupdiff-l", "guidance.group_size=4"]))
    npz = next(samples.rglob("*.npz"))
    _groupdiff(env, "score", str(npz), "--space", "inception", "--reference", pixels["uri"], "--inception-weights",
               str(random_inception_weights), "--fd-method", "eigh", "--fd-bootstrap", "0", "--batch-size", "12",
               "--out", str(tmp_path / "metrics.json"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["fid"] > 0 and 0.0 <= metrics["recall"] <= 1.0

    from registry.catalogue.db import open_session
    from registry.datasets import resolve_dataset

    with open_session(stack_env["GROUPDIFF_CATALOGUE_URL"]).begin() as session:
        row = resolve_dataset(session, f"{name}@latest")
        assert (row.uri, row.version, row.digest) == (latents["uri"], 1, latents["digest"])
