"""Group mining (``groupdiff mine``): candidates per anchor by similarity, class or at random (DESIGN 1.5).

Similarity mode: top-k candidates from a faiss index (self removed), their exact cosine recomputed,
those with cosine >= tau kept (best first). Anchors with fewer than N-1 passing candidates are handled
by ``fill``: ``class`` appends random same-class items, ``random`` random items, ``drop`` marks the
anchor ineligible; every filled member is flagged and counted. ``class`` / ``random`` modes draw k
seeded candidates of the same class / of the whole dataset. A static group per anchor is drawn from
the candidates: a seeded random N-1 (paper) or the best N-1.
"""
from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from ..data.digest import digest_json
from .config import MineConfig
from .index import build_index, measure_recall, search
from .table import GroupTable

log = logging.getLogger(__name__)


def _random_others(rng: np.random.Generator, pool: np.ndarray, anchor: int, count: int,
                   exclude: np.ndarray | None = None) -> np.ndarray:
    """Up to ``count`` distinct random items of ``pool`` that are not ``anchor`` nor in ``exclude``."""
    bad = np.asarray([anchor] if exclude is None else np.append(exclude, anchor))
    take = min(len(pool), count + len(bad))
    drawn = pool[rng.choice(len(pool), size=take, replace=False)]
    return drawn[~np.isin(drawn, bad)][:count]


PAIR_BLOCK_FLOATS = 1 << 25  # gathered (rows, k, d) block size: 128 MiB of float32


def pair_similarity(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Cosine of each anchor to each of its candidates ``ids`` (n, k); NaN where ids is -1. Blockwise in memory."""
    n, k = ids.shape
    sims = np.full((n, k), np.nan, dtype=np.float32)
    rows = max(1, PAIR_BLOCK_FLOATS // max(1, k * vectors.shape[1]))
    for s in range(0, n, rows):
        block = ids[s : s + rows]
        valid = block >= 0
        dots = np.einsum("nd,nkd->nk", vectors[s : s + len(block)], vectors[np.where(valid, block, 0)])
        sims[s : s + len(block)] = np.where(valid, dots, np.nan)
    return sims


def _similarity_candidates(vectors: np.ndarray, config: MineConfig, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    n = len(vectors)
    k = min(config.top_k, n - 1)
    index, params = build_index(vectors, config)
    meta["index"] = params
    if config.recall_sample:
        meta["recall"] = measure_recall(index, vectors, k, config.recall_sample, config.seed)
        log.info("index %s recall@%d = %.4f", config.index, k, meta["recall"]["recall_at_k"])
    _, ids = search(index, vectors, k + 1, config.query_batch)
    # drop the anchor itself (normally the first hit; duplicates may displace it, then drop the last)
    is_self = ids == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    ids = ids[~is_self].reshape(n, k)
    # exact cosine of each candidate (the index may be approximate), re-sorted best first
    sims = pair_similarity(vectors, ids)
    order = np.argsort(-np.nan_to_num(sims, nan=-np.inf), axis=1, kind="stable")
    ids, sims = np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)
    passed = sims >= config.tau  # NaN compares False
    ids = np.where(passed, ids, -1)
    sims = np.where(passed, sims, np.nan).astype(np.float32)
    return ids, sims


def _sampled_candidates(num_items: int, labels: np.ndarray, config: MineConfig,
                        rng: np.random.Generator) -> np.ndarray:
    """class / random modes: up to top_k seeded distinct candidates per anchor (same class / anyone)."""
    k = min(config.top_k, num_items - 1)
    ids = np.full((num_items, k), -1, dtype=np.int64)
    everyone = np.arange(num_items)
    pools = {c: np.flatnonzero(labels == c) for c in np.unique(labels)} if config.mode == "class" else None
    for a in tqdm(range(num_items), desc=f"{config.mode} groups", unit="anchor", mininterval=1.0):
        pool = pools[labels[a]] if pools is not None else everyone
        drawn = _random_others(rng, pool, a, k)
        ids[a, : len(drawn)] = drawn
    return ids


def mine_groups(labels: np.ndarray, config: MineConfig, vectors: np.ndarray | None = None,
                source: dict | None = None) -> GroupTable:
    """Mine a :class:`GroupTable` over ``len(labels)`` items (``vectors`` needed for similarity mode).

    Three jobs, in this order (one generator, seeded by ``config.seed``, drawn from in this order):
    candidates per anchor (:func:`_candidates`), the fill rule for anchors short of N - 1 candidates
    (:func:`_fill_short`), then each eligible anchor's N - 1 members (:func:`_draw_members`)."""
    labels = np.asarray(labels, dtype=np.int64)
    _check_mine_inputs(labels, config, vectors)
    rng = np.random.default_rng(config.seed)
    meta: dict = {"config": config.model_dump(), "source": source or {}, "num_items": len(labels)}
    ids, sims = _candidates(labels, config, vectors, rng, meta)
    passing = (ids >= 0).sum(axis=1)
    neighbours, similarity, filled, eligible = _fill_short(labels, config, vectors, rng, ids, sims, passing)
    groups, group_sims = _draw_members(config, rng, neighbours, similarity, eligible, passing)
    meta["stats"] = group_statistics(neighbours, similarity, filled, eligible, groups, group_sims, labels,
                                     passing, config)
    meta["digest"] = _table_digest(config, source, meta)
    log.info("mined groups %s: %s", meta["digest"], meta["stats"])
    return GroupTable(neighbours, similarity, filled, eligible, groups, labels, meta)


def _check_mine_inputs(labels: np.ndarray, config: MineConfig, vectors: np.ndarray | None) -> None:
    """Raise a ValueError naming the setting when the items cannot form groups as configured."""
    n, need = len(labels), config.group_size - 1
    if not -1.0 <= config.tau <= 1.0:
        raise ValueError(f"mine.tau={config.tau} is outside [-1, 1] (cosine similarity)")
    if need > config.top_k:
        raise ValueError(f"group_size-1={need} is larger than top_k={config.top_k}: raise mine.top_k")
    if need > n - 1:
        raise ValueError(f"group_size={config.group_size} needs at least {config.group_size} items, dataset has {n}")
    if vectors is not None and len(vectors) != n:
        raise ValueError(f"{len(vectors)} embeddings for {n} labels")
    if config.mode == "similarity" and vectors is None:
        raise ValueError("mine.mode='similarity' needs embeddings (run `groupdiff embed` first)")


def _candidates(labels: np.ndarray, config: MineConfig, vectors: np.ndarray | None, rng: np.random.Generator,
                meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids (-1 = none) and their similarities per anchor: index search above tau (similarity
    mode, which records the index in ``meta``), or drawn from the anchor's class or from everyone."""
    if config.mode == "similarity":
        return _similarity_candidates(np.ascontiguousarray(vectors, dtype=np.float32), config, meta)
    ids = _sampled_candidates(len(labels), labels, config, rng)
    sims = np.full(ids.shape, np.nan, dtype=np.float32)
    if vectors is not None:
        sims = pair_similarity(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return ids, sims


def _fill_short(labels: np.ndarray, config: MineConfig, vectors: np.ndarray | None, rng: np.random.Generator,
                ids: np.ndarray, sims: np.ndarray, passing: np.ndarray):
    """The fill rule for anchors with fewer than N - 1 candidates (only similarity mode can come up short;
    class mode only for classes smaller than N): ``drop`` them, or top them up at random from their class
    (``class``) or from everyone. Returns neighbours, similarity, the filled mask and the eligible anchors."""
    n, need = len(labels), config.group_size - 1
    width = max(ids.shape[1], need)
    neighbours = np.full((n, width), -1, dtype=np.int64)
    similarity = np.full((n, width), np.nan, dtype=np.float32)
    neighbours[:, : ids.shape[1]] = ids
    similarity[:, : ids.shape[1]] = sims
    filled = np.zeros((n, width), dtype=bool)
    eligible = np.ones(n, dtype=bool)
    everyone = np.arange(n)
    pools = {c: np.flatnonzero(labels == c) for c in np.unique(labels)} if config.fill == "class" else None
    for a in np.flatnonzero(passing < need):
        have = passing[a]
        if config.fill == "drop":
            eligible[a] = False
            continue
        pool = pools[labels[a]] if pools is not None else everyone
        extra = _random_others(rng, pool, a, need - have, exclude=neighbours[a, :have])
        neighbours[a, have : have + len(extra)] = extra
        filled[a, have : have + len(extra)] = True
        if vectors is not None:
            similarity[a, have : have + len(extra)] = vectors[extra] @ vectors[a]
        if have + len(extra) < need:  # e.g. a class smaller than N: cannot anchor a full group
            eligible[a] = False
    return neighbours, similarity, filled, eligible


def _draw_members(config: MineConfig, rng: np.random.Generator, neighbours: np.ndarray, similarity: np.ndarray,
                  eligible: np.ndarray, passing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each eligible anchor's group (anchor first, then N - 1 members: the best ones, or drawn at random
    from all passing candidates with ``draw='random'``) and the members' similarities; rows of
    ineligible anchors are -1."""
    n, need = len(neighbours), config.group_size - 1
    groups = np.full((n, config.group_size), -1, dtype=np.int64)
    group_sims = np.full((n, need), np.nan, dtype=np.float32)
    groups[:, 0] = np.arange(n)
    for a in np.flatnonzero(eligible):
        if config.draw == "random" and passing[a] > need:
            pick = np.sort(rng.choice(passing[a], size=need, replace=False))
        else:
            pick = np.arange(need)
        groups[a, 1:] = neighbours[a, pick]
        group_sims[a] = similarity[a, pick]
    groups[~eligible] = -1
    return groups, group_sims


def _table_digest(config: MineConfig, source: dict | None, meta: dict) -> str:
    """Content digest of a group table: its source, the settings that shape it and the index used."""
    similarity = config.mode == "similarity"
    key = {"source": source or {}, "mode": config.mode, "tau": config.tau if similarity else None,
           "group_size": config.group_size, "top_k": config.top_k, "draw": config.draw, "fill": config.fill,
           "seed": config.seed, "index": meta.get("index", {}).get("index") if similarity else None,
           "index_params": {k: v for k, v in meta.get("index", {}).items() if k not in ("build_s", "device")}}
    return digest_json(key)


def group_statistics(neighbours, similarity, filled, eligible, groups, group_sims, labels, passing,
                     config: MineConfig) -> dict:
    """Share of anchors with >= N-1 passing candidates, mean similarities, class purity, fill/drop counts."""
    need = config.group_size - 1
    members = groups[eligible, 1:]
    anchors = groups[eligible, :1]
    purity = float((labels[members] == labels[anchors]).mean()) if members.size else float("nan")
    cand_sims = similarity[(neighbours >= 0) & ~filled]
    member_sims = group_sims[eligible]

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if values.size and np.isfinite(values).any() else float("nan")

    return {
        "anchors": int(len(groups)),
        "share_anchors_enough": float((passing >= need).mean()),
        "mean_candidates": float(passing.mean()),
        "mean_candidate_similarity": mean(cand_sims),
        "mean_group_similarity": mean(member_sims),
        "class_purity": purity,
        "filled_members": int(filled.sum()),
        "anchors_filled": int(filled.any(axis=1).sum()),
        "anchors_dropped": int((~eligible).sum()),
    }


def run_mine(config, out_path, embed_dir=None) -> GroupTable:
    """Stage entry: mine with ``config.mine`` over the embeddings in ``embed_dir`` and save the table.

    Without ``embed_dir`` (class / random modes only) labels come from ``config.data``'s dataset.
    """
    from .embed import load_embeddings

    if embed_dir is not None:
        emb = load_embeddings(embed_dir)
        source = {"embeddings": emb.digest, "dataset": emb.meta["dataset_digest"], "encoder": emb.meta["encoder"]}
        table = mine_groups(emb.labels, config.mine, emb.vectors, source)
    else:
        if config.mine.mode == "similarity":
            raise ValueError("mine.mode='similarity' needs --embeddings DIR (written by `groupdiff embed`)")
        from ..data.datasets import build_dataset

        dataset = build_dataset(config.data)
        table = mine_groups(dataset.labels, config.mine, None, {"dataset": dataset.digest})
    table.save(out_path)
    return table
