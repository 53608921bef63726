"""Epoch plans: which dataset indices go into which batch, for each training variant (DESIGN 1.3).

A plan is a list of :class:`PlannedBatch`. Every batch holds ``batch_images`` images (the last one may
be smaller when ``drop_last=False``); group batches lay out the ``N`` members of each group contiguously
(anchor first), which is the ``(B*N, ...)`` layout group attention expects.

Variants
--------
* ``baseline``: a seeded shuffle chunked into direct batches, ``group_size=1``. The ``group_size``
  argument is ignored (baseline is plain SiT).
* ``groupdiff-f``: every batch is ``batch_images / N`` groups (with ``drop_last=False`` the last batch
  holds the remaining whole groups; fewer than N leftover items are left out).
* ``groupdiff-l`` (released recipe): ``round(group_ratio * num_batches)`` batches are unconditional
  group batches (``unconditional=True``); the other batches are direct conditional batches with N=1.
  The two kinds are interleaved in a seeded order. ``round`` is half-up, so the image share of group
  batches is within ``0.5 / num_batches`` of ``group_ratio``.
* ``eligible`` (optional, per item) limits which items may anchor a group (a table mined with
  ``fill='drop'``); ineligible items can still be members or go into direct batches.

Forming a group: anchors are visited in a seeded random order; an anchor already used this epoch is
skipped. Its members are the first ``N-1`` entries of ``neighbours[anchor]`` (best first, ``-1``
padding ignored) that are not the anchor and not yet used this epoch (the released code's
"first unused" rule), or a seeded random draw among all unused candidates when ``draw="random"``
(the paper's rule). **Fill rule**: when fewer than ``N-1`` unused candidates remain, the group is
completed with random unused items (drawn in a seeded order) and the number of such members is
recorded in ``PlannedBatch.filled``. With ``neighbours=None`` every member is drawn this way
(random grouping), so all ``N-1`` members of each group count as filled.

No image is used twice within an epoch. The whole plan is a pure function of its arguments: the
same ``(seed, epoch)`` gives the same plan on every rank, so ranks never need to talk about it.

The grouping loop is written by hand: no library forms groups under a "not used this epoch" constraint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

VARIANTS = ("baseline", "groupdiff-l", "groupdiff-f")
DRAWS = ("first", "random")


@dataclass(frozen=True)
class PlannedBatch:
    """One training batch of dataset indices."""

    indices: np.ndarray  # int64 dataset indices; the N members of each group are contiguous (anchor first)
    group_size: int  # N (1 for direct, conditional batches)
    unconditional: bool  # True for GroupDiff-l group batches (all labels null)
    filled: int = 0  # members drawn at random because the anchor had too few unused neighbours

    @property
    def num_groups(self) -> int:
        """Groups in this batch (images / N)."""
        return len(self.indices) // self.group_size


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, epoch, stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(stream)]))


def _check_neighbours(neighbours: np.ndarray, num_items: int) -> np.ndarray:
    nb = np.asarray(neighbours)
    if nb.ndim != 2 or nb.shape[0] != num_items:
        raise ValueError(f"neighbours must have shape (num_items={num_items}, K), got {nb.shape}")
    if not np.issubdtype(nb.dtype, np.integer):
        raise ValueError(f"neighbours must be an integer array, got dtype {nb.dtype}")
    if nb.size and (nb.min() < -1 or nb.max() >= num_items):
        raise ValueError(
            f"neighbours holds values in [{nb.min()}, {nb.max()}]; expected dataset indices in "
            f"[0, {num_items}) or -1 for padding"
        )
    return nb.astype(np.int64, copy=False)


class _GroupFormer:
    """Forms groups of N unused items, tracking what is used and how many members were filled."""

    def __init__(self, num_items: int, group_size: int, neighbours: np.ndarray | None,
                 draw: str, rng: np.random.Generator):
        self.used = np.zeros(num_items, dtype=bool)
        self.n = group_size
        self.neighbours = neighbours
        self.draw = draw
        self.rng = rng
        self.fill_order = rng.permutation(num_items)
        self.fill_ptr = 0

    def _random_unused(self, count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count and self.fill_ptr < len(self.fill_order):
            item = int(self.fill_order[self.fill_ptr])
            self.fill_ptr += 1
            if not self.used[item]:
                self.used[item] = True
                picked.append(item)
        return picked

    def form(self, anchor: int) -> tuple[list[int], int] | None:
        """Group for ``anchor`` (anchor first) and its filled count; None if the anchor is used or too few items remain."""
        if self.used[anchor]:
            return None
        self.used[anchor] = True
        members = [anchor]
        if self.neighbours is not None and self.n > 1:
            row = self.neighbours[anchor]
            cand = row[(row >= 0) & (row != anchor)]
            cand = cand[~self.used[cand]]
            _, first = np.unique(cand, return_index=True)  # keep order, drop repeats
            cand = cand[np.sort(first)]
            if self.draw == "random" and len(cand) > self.n - 1:
                cand = self.rng.choice(cand, size=self.n - 1, replace=False)
            chosen = [int(c) for c in cand[: self.n - 1]]
            self.used[chosen] = True
            members += chosen
        filled = self.n - len(members)
        members += self._random_unused(filled)
        if len(members) < self.n:  # the epoch ran out of items: give them back
            self.used[members] = False
            return None
        return members, filled


def build_epoch_plan(variant: str, num_items: int, batch_images: int, group_size: int, epoch: int, seed: int,
                     neighbours: np.ndarray | None = None, group_ratio: float = 0.1, drop_last: bool = True,
                     draw: Literal["first", "random"] = "first",
                     eligible: np.ndarray | None = None) -> list[PlannedBatch]:
    """The batches of one epoch for ``variant`` ('baseline' | 'groupdiff-l' | 'groupdiff-f').

    ``neighbours`` is ``(num_items, K)`` candidate neighbours per anchor (best first, -1 padded), e.g.
    the ``neighbours`` array of a group table; ``None`` forms random groups. Deterministic in
    ``(seed, epoch)``. See the module docstring for the grouping and fill rules. ``eligible`` (bool per
    item, e.g. a group table's ``fill='drop'`` result) restricts which items may anchor a group; the
    others can still be members or go into direct batches. ``GroupTable.plan_kwargs()`` gives both arrays.
    """
    _check_plan_args(variant, draw, num_items, batch_images, group_ratio)
    order = _rng(seed, epoch, 0).permutation(num_items).astype(np.int64)
    if variant == "baseline":
        return [PlannedBatch(b, 1, False) for b in _chunk(order, batch_images, drop_last)]
    nb, eligible = _check_group_args(num_items, batch_images, group_size, neighbours, eligible)
    groups_per_batch = batch_images // group_size
    target = _target_groups(variant, num_items, batch_images, group_size, group_ratio, drop_last)
    former = _GroupFormer(num_items, group_size, nb, draw, _rng(seed, epoch, 1))
    groups, filled = _form_groups(former, order, eligible, target)
    group_batches = _group_batches(variant, groups, filled, group_size, groups_per_batch, drop_last)
    if variant == "groupdiff-f":
        return group_batches
    rest = order[~former.used[order]]
    direct = [PlannedBatch(b, 1, False) for b in _chunk(rest, batch_images, drop_last)]
    batches = group_batches + direct
    mix = _rng(seed, epoch, 2).permutation(len(batches))
    return [batches[i] for i in mix]


def _check_plan_args(variant: str, draw: str, num_items: int, batch_images: int, group_ratio: float) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown training variant {variant!r}; expected one of {VARIANTS}")
    if draw not in DRAWS:
        raise ValueError(f"unknown neighbour draw {draw!r}; expected one of {DRAWS}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if batch_images < 1:
        raise ValueError(f"batch_images must be >= 1, got {batch_images}")
    if not 0.0 <= group_ratio <= 1.0:
        raise ValueError(f"group_ratio must be in [0, 1], got {group_ratio}")


def _check_group_args(num_items: int, batch_images: int, group_size: int, neighbours: np.ndarray | None,
                      eligible: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The checked neighbour table and eligibility mask of a GroupDiff plan (errors name the bad value)."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if batch_images % group_size:
        raise ValueError(
            f"batch_images={batch_images} is not divisible by group_size={group_size}: a batch must hold whole groups"
        )
    if group_size > num_items:
        raise ValueError(f"group_size={group_size} exceeds the dataset size num_items={num_items}")
    nb = None if neighbours is None else _check_neighbours(neighbours, num_items)
    if eligible is not None:
        eligible = np.asarray(eligible, dtype=bool)
        if eligible.shape != (num_items,):
            raise ValueError(f"eligible must have shape (num_items={num_items},), got {eligible.shape}")
    return nb, eligible


def _target_groups(variant: str, num_items: int, batch_images: int, group_size: int, group_ratio: float,
                   drop_last: bool) -> int:
    """Groups to form this epoch: every image in groups (GroupDiff-f), or ``group_ratio`` of the batches
    (rounded half up) as group batches (GroupDiff-l)."""
    groups_per_batch = batch_images // group_size
    if variant == "groupdiff-f":
        full_batches = num_items // batch_images
        return full_batches * groups_per_batch if drop_last else num_items // group_size
    num_batches = num_items // batch_images if drop_last else -(-num_items // batch_images)
    return int(np.floor(group_ratio * num_batches + 0.5)) * groups_per_batch


def _form_groups(former: _GroupFormer, order: np.ndarray, eligible: np.ndarray | None,
                 target: int) -> tuple[list[list[int]], list[int]]:
    """Anchors in epoch order form groups until ``target`` groups exist (ineligible anchors are skipped)."""
    groups: list[list[int]] = []
    filled: list[int] = []
    for anchor in order:
        if len(groups) >= target:
            break
        if eligible is not None and not eligible[anchor]:
            continue
        formed = former.form(int(anchor))
        if formed is not None:
            groups.append(formed[0])
            filled.append(formed[1])
    return groups, filled


def _group_batches(variant: str, groups: list[list[int]], filled: list[int], group_size: int,
                   groups_per_batch: int, drop_last: bool) -> list[PlannedBatch]:
    """Consecutive groups packed into batches of ``groups_per_batch`` (a short last batch dropped when asked)."""
    batches = []
    for start in range(0, len(groups), groups_per_batch):
        members = groups[start : start + groups_per_batch]
        if drop_last and len(members) < groups_per_batch:
            break
        batches.append(PlannedBatch(
            np.asarray([i for g in members for i in g], dtype=np.int64), group_size,
            unconditional=(variant == "groupdiff-l"), filled=int(sum(filled[start : start + groups_per_batch])),
        ))
    return batches


def _chunk(items: np.ndarray, size: int, drop_last: bool) -> list[np.ndarray]:
    stop = len(items) - len(items) % size if drop_last else len(items)
    return [items[s : min(s + size, stop)] for s in range(0, stop, size)]


def shard_batch(batch: PlannedBatch, rank: int, world_size: int) -> PlannedBatch:
    """Rank ``rank``'s contiguous share of ``batch``, never splitting a group.

    Raises ValueError when the batch's groups cannot be split evenly over ``world_size`` ranks.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, world_size={world_size})")
    groups = batch.num_groups
    if groups * batch.group_size != len(batch.indices):
        raise ValueError(f"batch holds {len(batch.indices)} images, not a multiple of group_size={batch.group_size}")
    if groups % world_size:
        raise ValueError(
            f"batch of {groups} groups (N={batch.group_size}) cannot be split over world_size={world_size} "
            f"without splitting a group; choose batch_images divisible by group_size*world_size"
        )
    per = groups // world_size * batch.group_size
    # `filled` is a per-batch statistic; it is not apportioned to shards.
    return PlannedBatch(batch.indices[rank * per : (rank + 1) * per], batch.group_size, batch.unconditional, 0)


def plan_statistics(plan: list[PlannedBatch]) -> dict[str, float]:
    """Counts for logging: batches, images, share of images in group batches, filled members."""
    images = sum(len(b.indices) for b in plan)
    grouped = sum(len(b.indices) for b in plan if b.group_size > 1 or b.unconditional)
    return {
        "batches": float(len(plan)),
        "images": float(images),
        "group_batches": float(sum(1 for b in plan if b.group_size > 1 or b.unconditional)),
        "group_image_share": grouped / images if images else 0.0,
        "filled_members": float(sum(b.filled for b in plan)),
    }
