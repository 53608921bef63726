"""faiss indexes: exact equals brute force; approximate recall is measured (and reaches 1 when exhaustive)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from groupdiff.grouping.config import MineConfig
from groupdiff.grouping.index import build_index, exact_search, measure_recall, recall_at_k, resolve_params, search


def clustered(n=3000, d=32, clusters=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_equals_torch_topk():
    x = clustered(1000)
    index, params = build_index(x, MineConfig(index="flat"))
    sims, ids = search(index, x[:200], 10, batch=64, progress=False)
    ref_sims, ref_ids = torch.topk(torch.from_numpy(x[:200]) @ torch.from_numpy(x).T, 10, dim=1)
    assert np.allclose(sims, ref_sims.numpy(), atol=1e-5)
    # ids agree except where two candidates tie in similarity
    same = ids == ref_ids.numpy()
    assert same.mean() > 0.999
    assert np.allclose(np.take_along_axis(x[:200] @ x.T, ids, 1), ref_sims.numpy(), atol=1e-5)
    assert params["device"] == "cpu"


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_recall_is_measured(kind):
    x = clustered()
    cfg = MineConfig(index=kind, nprobe=4, pq_m=8, pq_bits=6, ef_search=32, hnsw_m=16)
    index, _ = build_index(x, cfg)
    r = measure_recall(index, x, k=10, sample=200, seed=0)
    # measured, not assumed: recompute by hand from the two searches
    q = x[np.sort(np.random.default_rng(0).choice(len(x), 200, replace=False))]
    _, exact = exact_search(x, q, 10)
    _, approx = search(index, q, 10, progress=False)
    assert r["recall_at_k"] == pytest.approx(recall_at_k(approx, exact))
    assert 0.3 < r["recall_at_k"] <= 1.0


def test_ivf_exhaustive_probe_is_exact():
    x = clustered()
    cfg = MineConfig(index="ivf", nlist=16, nprobe=16)
    index, params = build_index(x, cfg)
    assert params["nlist"] == 16
    assert measure_recall(index, x, k=10, sample=200)["recall_at_k"] == pytest.approx(1.0)
    low = measure_recall(build_index(x, MineConfig(index="ivf", nlist=64, nprobe=1))[0], x, 10, 200)
    assert low["recall_at_k"] < 1.0  # one probe of 64 lists does miss neighbours


def test_recall_counts_overlap():
    assert recall_at_k(np.array([[1, 2, 3, -1]]), np.array([[3, 2, 9, 8]])) == 0.5


def test_bad_params():
    with pytest.raises(ValueError, match="pq_m=7 must divide"):
        resolve_params(MineConfig(index="ivfpq", pq_m=7), 1000, 32)
    assert resolve_params(MineConfig(index="ivf", nlist=0), 10_000, 8)["nlist"] == 256
    assert resolve_params(MineConfig(index="ivf", nlist=1000), 3900, 8)["nlist"] == 100  # >= 39 points per list
