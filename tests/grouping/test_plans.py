"""Epoch plans: coverage, no reuse, determinism, ratio, sharding."""
from __future__ import annotations

import numpy as np
import pytest

from groupdiff.grouping.plans import PlannedBatch, build_epoch_plan, plan_statistics, shard_batch


def _knn(num_items: int, k: int, seed: int = 0) -> np.ndarray:
    """Exact neighbours of random points (best first), so groups are real nearest-neighbour groups."""
    x = np.random.default_rng(seed).normal(size=(num_items, 8))
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1)[:, 1 : k + 1].astype(np.int64)


def _all(plan):
    return np.concatenate([b.indices for b in plan])


@pytest.mark.parametrize("variant", ["baseline", "groupdiff-l", "groupdiff-f"])
def test_no_duplicates_and_coverage(variant):
    nb = _knn(400, 10)
    plan = build_epoch_plan(variant, 400, 40, 4, epoch=0, seed=1, neighbours=nb, group_ratio=0.3)
    idx = _all(plan)
    assert len(np.unique(idx)) == len(idx)
    assert idx.dtype == np.int64
    assert all(len(b.indices) == 40 for b in plan)
    assert len(idx) == 400  # 400 divisible by 40: every item used exactly once
    plan = build_epoch_plan(variant, 403, 40, 4, epoch=0, seed=1, neighbours=_knn(403, 10), drop_last=False)
    idx = _all(plan)
    assert len(np.unique(idx)) == len(idx)
    expected = 400 if variant == "groupdiff-f" else 403  # f drops the 3 items that cannot form a group of 4
    assert len(idx) == expected


def test_groupdiff_f_groups_are_neighbours_and_contiguous():
    nb = _knn(400, 12)
    plan = build_epoch_plan("groupdiff-f", 400, 40, 4, epoch=3, seed=0, neighbours=nb)
    assert all(b.group_size == 4 and not b.unconditional for b in plan)
    # across the epoch, members not in the anchor's list are exactly the counted fills
    off_list = sum(int((~np.isin(g[1:], nb[g[0]])).sum()) for b in plan for g in b.indices.reshape(-1, 4))
    assert off_list == plan_statistics(plan)["filled_members"]
    assert 0 < off_list < 300  # late anchors run out of unused neighbours, early ones do not


def test_first_unused_rule_takes_best_neighbours():
    nb = _knn(200, 10)
    plan = build_epoch_plan("groupdiff-f", 200, 20, 4, epoch=0, seed=5, neighbours=nb)
    first_group = plan[0].indices[:4]
    # the very first group formed has nothing used yet: members are exactly the anchor's 3 best neighbours
    assert list(first_group[1:]) == list(nb[first_group[0], :3])


def test_random_draw_stays_within_candidates_and_is_seeded():
    nb = _knn(200, 10)
    a = build_epoch_plan("groupdiff-f", 200, 20, 4, 0, 5, neighbours=nb, draw="random")
    b = build_epoch_plan("groupdiff-f", 200, 20, 4, 0, 5, neighbours=nb, draw="random")
    assert np.array_equal(_all(a), _all(b))
    g = a[0].indices[:4]
    assert set(g[1:]) <= set(nb[g[0]])
    first = build_epoch_plan("groupdiff-f", 200, 20, 4, 0, 5, neighbours=nb)
    assert not np.array_equal(_all(a), _all(first))


def test_fill_rule_counts_when_neighbours_are_padding():
    nb = np.full((100, 5), -1, dtype=np.int64)
    plan = build_epoch_plan("groupdiff-f", 100, 20, 4, 0, 0, neighbours=nb)
    assert plan_statistics(plan)["filled_members"] == 25 * 3
    assert len(np.unique(_all(plan))) == 100
    no_nb = build_epoch_plan("groupdiff-f", 100, 20, 4, 0, 0, neighbours=None)
    assert plan_statistics(no_nb)["filled_members"] == 75


@pytest.mark.parametrize("variant", ["baseline", "groupdiff-l", "groupdiff-f"])
def test_determinism_and_epochs_differ(variant):
    nb = _knn(300, 8)
    a = build_epoch_plan(variant, 300, 20, 4, epoch=2, seed=7, neighbours=nb)
    b = build_epoch_plan(variant, 300, 20, 4, epoch=2, seed=7, neighbours=nb)
    c = build_epoch_plan(variant, 300, 20, 4, epoch=3, seed=7, neighbours=nb)
    d = build_epoch_plan(variant, 300, 20, 4, epoch=2, seed=8, neighbours=nb)
    assert [(x.group_size, x.unconditional) for x in a] == [(x.group_size, x.unconditional) for x in b]
    assert np.array_equal(_all(a), _all(b))
    assert not np.array_equal(_all(a), _all(c))
    assert not np.array_equal(_all(a), _all(d))


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_groupdiff_l_ratio_and_batch_kinds(ratio):
    num_items, batch = 2000, 40
    plan = build_epoch_plan("groupdiff-l", num_items, batch, 4, 0, 0, neighbours=_knn(num_items, 6), group_ratio=ratio)
    num_batches = num_items // batch
    group = [b for b in plan if b.unconditional]
    direct = [b for b in plan if not b.unconditional]
    assert all(b.group_size == 4 and len(b.indices) == batch for b in group)
    assert all(b.group_size == 1 and len(b.indices) == batch for b in direct)
    assert len(plan) == num_batches
    assert abs(len(group) / num_batches - ratio) <= 0.5 / num_batches + 1e-9
    share = plan_statistics(plan)["group_image_share"]
    assert abs(share - ratio) <= 0.5 / num_batches + 1e-9
    if 0 < ratio < 1:  # interleaved, not all group batches first
        kinds = [b.unconditional for b in plan]
        assert kinds != sorted(kinds, reverse=True)


def test_baseline_is_a_permutation():
    plan = build_epoch_plan("baseline", 100, 10, 4, 0, 0)
    assert all(b.group_size == 1 and not b.unconditional for b in plan)
    assert sorted(_all(plan).tolist()) == list(range(100))


def test_bad_inputs():
    with pytest.raises(ValueError, match="not divisible by group_size=3"):
        build_epoch_plan("groupdiff-f", 100, 10, 3, 0, 0)
    with pytest.raises(ValueError, match="unknown training variant 'fancy'"):
        build_epoch_plan("fancy", 100, 10, 2, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        build_epoch_plan("groupdiff-f", 100, 10, 2, 0, 0, neighbours=np.zeros((99, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="dataset indices"):
        build_epoch_plan("groupdiff-f", 100, 10, 2, 0, 0, neighbours=np.full((100, 3), 100, dtype=np.int64))
    with pytest.raises(ValueError, match="group_ratio"):
        build_epoch_plan("groupdiff-l", 100, 10, 2, 0, 0, group_ratio=1.5)


@pytest.mark.parametrize("world_size", [1, 2, 5])
def test_shard_keeps_groups_whole(world_size):
    plan = build_epoch_plan("groupdiff-l", 1000, 40, 4, 0, 0, neighbours=_knn(1000, 6), group_ratio=0.5)
    for batch in plan:
        shards = [shard_batch(batch, r, world_size) for r in range(world_size)]
        assert np.array_equal(np.concatenate([s.indices for s in shards]), batch.indices)
        for s in shards:
            assert s.group_size == batch.group_size and s.unconditional == batch.unconditional
            assert len(s.indices) % batch.group_size == 0
            groups = set(map(tuple, batch.indices.reshape(-1, batch.group_size).tolist()))
            assert set(map(tuple, s.indices.reshape(-1, s.group_size).tolist())) <= groups


def test_shard_errors():
    batch = PlannedBatch(np.arange(12, dtype=np.int64), 4, True)  # 3 groups
    with pytest.raises(ValueError, match="3 groups"):
        shard_batch(batch, 0, 2)
    with pytest.raises(ValueError, match="rank=2"):
        shard_batch(batch, 2, 2)


def test_ineligible_items_never_anchor():
    nb = _knn(400, 10)
    eligible = np.zeros(400, dtype=bool)
    eligible[::2] = True
    plan = build_epoch_plan("groupdiff-l", 400, 40, 4, 0, 0, neighbours=nb, group_ratio=0.5, eligible=eligible)
    anchors = [g[0] for b in plan if b.unconditional for g in b.indices.reshape(-1, 4)]
    assert anchors and all(eligible[a] for a in anchors)
    assert len(np.unique(_all(plan))) == 400
