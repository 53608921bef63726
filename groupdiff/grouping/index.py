"""Inner-product similarity search with faiss: flat (exact), IVF, IVF-PQ, HNSW; GPU when present.

Vectors are L2-normalised, so inner product = cosine similarity. The approximate indexes are trained
on a seeded sample; :func:`measure_recall` compares them to exact search on a sample of queries.
"""
from __future__ import annotations

import math
import time

import faiss
import numpy as np
from tqdm.auto import tqdm

from .config import MineConfig

MIN_POINTS_PER_LIST = 39  # faiss warns below 39 training points per IVF centroid


def resolve_params(config: MineConfig, num_items: int, dim: int) -> dict:
    """The index parameters actually used (auto nlist resolved, nprobe capped), recorded with the artefact."""
    params: dict = {"index": config.index}
    if config.index in ("ivf", "ivfpq"):
        nlist = config.nlist or int(4 * math.sqrt(num_items))
        nlist = max(1, min(nlist, num_items // MIN_POINTS_PER_LIST or 1))
        params.update(nlist=nlist, nprobe=min(config.nprobe, nlist))
    if config.index == "ivfpq":
        if dim % config.pq_m:
            raise ValueError(f"mine.pq_m={config.pq_m} must divide the embedding dimension {dim}")
        params.update(pq_m=config.pq_m, pq_bits=config.pq_bits)
    if config.index == "hnsw":
        params.update(hnsw_m=config.hnsw_m, ef_construction=config.ef_construction, ef_search=config.ef_search)
    return params


def _use_gpu(config: MineConfig) -> bool:
    return config.use_gpu == "auto" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def build_index(vectors: np.ndarray, config: MineConfig) -> tuple[faiss.Index, dict]:
    """An index over ``vectors`` (float32, unit rows) and the parameters used (incl. build time, device)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    params = resolve_params(config, n, d)
    start = time.perf_counter()
    if config.index == "flat":
        index = faiss.IndexFlatIP(d)
    elif config.index == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    else:
        quantizer = faiss.IndexFlatIP(d)
        if config.index == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], config.pq_m, config.pq_bits, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(config.seed)
        train_n = min(n, max(256 * params["nlist"], 2 ** config.pq_bits * 64 if config.index == "ivfpq" else 0))
        train = x if train_n >= n else x[np.sort(rng.choice(n, size=train_n, replace=False))]
        index.train(train)
        index.nprobe = params["nprobe"]
    params["device"] = "cpu"
    if _use_gpu(config) and config.index != "hnsw":  # faiss has no GPU HNSW; it stays on CPU
        index = faiss.index_cpu_to_all_gpus(index)
        params["device"] = f"gpu x{faiss.get_num_gpus()}"
        if config.index in ("ivf", "ivfpq"):
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", params["nprobe"])
    for s in range(0, n, 65_536):
        index.add(x[s : s + 65_536])
    params["build_s"] = round(time.perf_counter() - start, 3)
    return index, params


def search(index: faiss.Index, queries: np.ndarray, k: int, batch: int = 4096,
           progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarities float32, ids int64) per query, best first; ids -1 where fewer exist."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sims = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for s in tqdm(range(0, len(q), batch), desc="search", unit="batch", disable=not progress):
        sims[s : s + batch], ids[s : s + batch] = index.search(q[s : s + batch], k)
    return sims, ids


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner product (faiss flat), the reference for recall."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return search(index, queries, k, progress=False)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (ids -1 never count)."""
    k = exact_ids.shape[1]
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)


def measure_recall(index: faiss.Index, vectors: np.ndarray, k: int, sample: int, seed: int = 0) -> dict:
    """recall@k of ``index`` against exact search on ``sample`` seeded queries drawn from ``vectors``, with timings."""
    n = len(vectors)
    rng = np.random.default_rng(seed)
    q = vectors[np.sort(rng.choice(n, size=min(sample, n), replace=False))]
    k = min(k, n)
    t0 = time.perf_counter()
    _, approx = search(index, q, k, progress=False)
    t1 = time.perf_counter()
    _, exact = exact_search(vectors, q, k)
    t2 = time.perf_counter()
    return {"recall_at_k": recall_at_k(approx, exact), "k": k, "queries": len(q),
            "approx_s": t1 - t0, "exact_s": t2 - t1, "speedup": (t2 - t1) / max(t1 - t0, 1e-9)}
