"""Built-in data digests and the shard writer."""
from __future__ import annotations

import numpy as np
import pytest

from groupdiff.data.datasets import fmnist_dataset
from groupdiff.data.shards import load_shards, run_shards, shard_path


def test_fmnist_digest_stable_and_sensitive():
    a = fmnist_dataset("test", 32, 200)
    assert a.digest == fmnist_dataset("test", 32, 200).digest
    assert a.digest != fmnist_dataset("test", 32, 201).digest
    assert a.digest != fmnist_dataset("test", 28, 200).digest
    assert a.digest != fmnist_dataset("train", 32, 200).digest
    x, y = a[3]
    assert x.shape == (1, 32, 32) and y == int(a.labels[3])


def test_shards_disjoint_across_ranks_and_restart(tmp_path):
    calls = []

    def compute(idx):
        calls.append(idx[0])
        return idx[:, None].astype(np.float32) * 2

    r0 = run_shards(25, 4, tmp_path, "x", compute, rank=0, world_size=2)
    r1 = run_shards(25, 4, tmp_path, "x", compute, rank=1, world_size=2)
    assert r0["computed"] == [0, 2, 4, 6] and r1["computed"] == [1, 3, 5]
    assert np.array_equal(load_shards(25, 4, tmp_path, "x")[:, 0], np.arange(25) * 2.0)
    shard_path(tmp_path, "x", 3).unlink()
    with pytest.raises(FileNotFoundError, match=r"shards \[3\]"):
        load_shards(25, 4, tmp_path, "x")
    again = run_shards(25, 4, tmp_path, "x", compute)
    assert again["computed"] == [3] and len(again["skipped"]) == 6
    assert not list(tmp_path.glob(".*tmp*"))
