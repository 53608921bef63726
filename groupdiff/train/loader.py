"""Reading each step's items ahead of the step: a DataLoader over the epoch plans (``data.num_workers`` worker
processes, ``data.prefetch_factor`` steps read ahead by each).

The sampler walks the plans in the main process from the resumed position, exactly as the loop would, and
hands each step's share of indices (this rank's, see :func:`~groupdiff.grouping.plans.shard_batch`) to a
worker, which reads the items from the source (memory, image files or shards). What the step trains on is
therefore the same with 0, 1 or more workers, and a resumed run reads from where it stopped.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ..data.datasets import fetch_items
from ..grouping.plans import PlannedBatch, shard_batch


class PlannedSteps(torch.utils.data.Sampler):
    """``(batch, epoch, index, share indices)`` for ``count`` steps from plan position (``epoch``, ``index``)."""

    def __init__(self, plans, epoch: int, index: int, count: int, rank: int, world: int):
        self.plans, self.epoch, self.index, self.count, self.rank, self.world = plans, epoch, index, count, rank, world

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[PlannedBatch, int, int, np.ndarray]]:
        epoch, index = self.epoch, self.index
        for _ in range(self.count):
            while index >= len(self.plans.plan(epoch)):
                epoch, index = epoch + 1, 0
            batch = self.plans.plan(epoch)[index]
            yield batch, epoch, index, shard_batch(batch, self.rank, self.world).indices
            index += 1


class _StepItems(torch.utils.data.Dataset):
    """Maps a planned step to ``(batch, epoch, index, items of this rank's share)``."""

    def __init__(self, source: Any):
        self.source = source

    def __getitem__(self, planned: tuple[PlannedBatch, int, int, np.ndarray]):
        batch, epoch, index, share = planned
        return batch, epoch, index, fetch_items(self.source, share)


def step_loader(source: Any, plans, epoch: int, index: int, count: int, rank: int, world: int,
                num_workers: int, prefetch_factor: int) -> torch.utils.data.DataLoader:
    """The DataLoader yielding ``(batch, epoch, index, x0)`` for the next ``count`` steps."""
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers else {}
    return torch.utils.data.DataLoader(
        _StepItems(source), sampler=PlannedSteps(plans, epoch, index, count, rank, world), batch_size=None,
        num_workers=num_workers, collate_fn=_as_is, **extra,
    )


def _as_is(item):
    """No collation: a step's items are one tensor already."""
    return item
