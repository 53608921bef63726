"""Embedding stage: L2-normalised shards, restart after a crash, disjoint ranks, NaN files, CLI end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groupdiff.cli import main
from groupdiff.data.datasets import fmnist_dataset
from groupdiff.data.shards import shard_path
from groupdiff.encoders.pixels import PixelEncoder
from groupdiff.grouping.config import EmbedConfig
from groupdiff.grouping.embed import embed_dataset, load_embeddings
from groupdiff.grouping.table import GroupTable


class Counting:
    """A pixels encoder that counts calls and can crash after a number of batches (a killed stage)."""

    name = "pixels"

    def __init__(self, crash_after: int | None = None):
        self.inner = PixelEncoder.create(0, None)
        self.digest = self.inner.digest
        self.calls = 0
        self.crash_after = crash_after

    def encode(self, images):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.inner.encode(images)


@pytest.fixture(scope="module")
def dataset():
    return fmnist_dataset("test", 16, 250)


CFG = EmbedConfig(encoder="pixels", shard_size=50, batch_size=20, device="cpu")  # 5 shards of 3 batches


def test_restart_computes_only_missing_shards(dataset, tmp_path):
    full = embed_dataset(dataset, CFG, tmp_path / "full", encoder=Counting())
    assert full["computed"] == [0, 1, 2, 3, 4] and full["complete"]
    ref = load_embeddings(tmp_path / "full")
    assert np.allclose(np.linalg.norm(ref.vectors, axis=1), 1.0, atol=1e-5)
    expected = torch.nn.functional.normalize(dataset.images.flatten(1), dim=1).numpy()
    assert np.allclose(ref.vectors, expected, atol=1e-6)
    assert np.array_equal(ref.labels, dataset.labels)

    with pytest.raises(KeyboardInterrupt):  # killed in the middle of shard 2 (after 7 batches)
        embed_dataset(dataset, CFG, tmp_path / "run", encoder=Counting(crash_after=7))
    assert [shard_path(tmp_path / "run", "emb", s).exists() for s in range(5)] == [True, True, False, False, False]
    with pytest.raises(FileNotFoundError, match=r"shards \[2, 3, 4\]"):
        load_embeddings(tmp_path / "run")
    stale = tmp_path / "run" / ".emb-00002.npy.tmp-999"  # a half-written file of the killed process
    stale.write_bytes(b"partial")
    again = Counting()
    rerun = embed_dataset(dataset, CFG, tmp_path / "run", encoder=again)
    assert rerun["computed"] == [2, 3, 4] and rerun["skipped"] == [0, 1]
    assert again.calls == 9  # 3 shards x 3 batches, nothing recomputed
    assert not stale.exists()
    resumed = load_embeddings(tmp_path / "run")
    assert np.array_equal(resumed.vectors, ref.vectors) and resumed.digest == ref.digest


def test_ranks_write_disjoint_shards(dataset, tmp_path):
    r0 = embed_dataset(dataset, CFG, tmp_path, rank=0, world_size=2, encoder=Counting())
    assert r0["computed"] == [0, 2, 4] and not r0["complete"]
    r1 = embed_dataset(dataset, CFG, tmp_path, rank=1, world_size=2, encoder=Counting())
    assert r1["computed"] == [1, 3] and r1["complete"]
    single = embed_dataset(dataset, CFG, tmp_path / "single", encoder=Counting())
    assert np.array_equal(load_embeddings(tmp_path).vectors, load_embeddings(tmp_path / "single").vectors)
    assert single["manifest"]["digest"] == r0["manifest"]["digest"]


def test_other_config_refused_and_nan_file_named(dataset, tmp_path):
    embed_dataset(dataset, CFG, tmp_path, encoder=Counting())
    with pytest.raises(ValueError, match="another"):
        embed_dataset(fmnist_dataset("test", 16, 240), CFG, tmp_path, encoder=Counting())
    bad = np.load(shard_path(tmp_path, "emb", 3))
    bad[7, 0] = np.nan
    np.save(shard_path(tmp_path, "emb", 3), bad)
    with pytest.raises(ValueError, match=r"NaN.*first rows \[157\]"):
        load_embeddings(tmp_path)


def test_cli_embed_then_mine(tmp_path, capsys):
    common = ["--set", "data.split=test", "--set", "data.limit=300", "--set", "data.image_size=16"]
    assert main(["embed", *common, "--set", "embed.shard_size=128", "--set", "embed.pca_dim=16",
                 "--set", "embed.pca_fit_items=200", "--out", str(tmp_path / "emb")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["computed"] == [0, 1, 2] and out["complete"]
    assert main(["mine", *common, "--set", "mine.index=hnsw", "--set", "mine.tau=0.5", "--set", "mine.top_k=16",
                 "--set", "mine.recall_sample=100", "--embeddings", str(tmp_path / "emb"),
                 "--out", str(tmp_path / "g.npz")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = GroupTable.load(tmp_path / "g.npz")
    assert out["digest"] == table.digest and table.meta["source"]["embeddings"] == load_embeddings(tmp_path / "emb").digest
    assert table.meta["index"]["index"] == "hnsw" and 0 < table.meta["recall"]["recall_at_k"] <= 1
    assert table.meta["stats"]["class_purity"] > 0.3  # well above the 0.1 of random groups on 10 classes
    # class mode needs no embeddings: labels come from the dataset
    assert main(["mine", *common, "--set", "mine.mode=class", "--out", str(tmp_path / "c.npz")]) == 0
    assert GroupTable.load(tmp_path / "c.npz").meta["stats"]["class_purity"] == 1.0
    assert main(["mine", *common, "--out", str(tmp_path / "x.npz")]) == 2  # similarity without embeddings: clear error
    assert "needs --embeddings" in capsys.readouterr().err


def test_sigkill_half_way_then_rerun_computes_only_missing_shards(tmp_path):
    """A real kill (SIGKILL of the `groupdiff embed` process) mid-run, then a rerun: only the missing shards
    are computed and the result equals an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = ["--set", "data.limit=12000", "--set", "embed.shard_size=500", "--set", "embed.batch_size=16"]
    total = 12000 // 500

    def command(out):
        return [sys.executable, "-m", "groupdiff.cli", "embed", *settings, "--out", str(out)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(command(run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not shard_path(run_dir, "emb", 0).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "embed stage ended before its first shard"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [s for s in range(total) if shard_path(run_dir, "emb", s).exists()]
    assert 1 <= len(done_before) < total, done_before  # really killed half-way

    rerun = subprocess.run(command(run_dir), env=env, capture_output=True, text=True, check=True)
    report = json.loads([line for line in rerun.stdout.splitlines() if line.startswith("{")][-1])
    assert report["skipped"] == done_before
    assert report["computed"] == [s for s in range(total) if s not in done_before]
    subprocess.run(command(tmp_path / "straight"), env=env, capture_output=True, check=True)
    resumed, straight = load_embeddings(run_dir), load_embeddings(tmp_path / "straight")
    assert np.array_equal(resumed.vectors, straight.vectors) and resumed.digest == straight.digest


def test_a_bad_encoder_setting_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "emb"
    assert main(["embed", "--set", "embed.encoder=clip", "--set", "data.limit=20", "--out", str(out)]) == 2
    assert "no weights file configured" in capsys.readouterr().err
    assert not out.exists()
