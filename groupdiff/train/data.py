"""What one optimizer step trains on: dataset, neighbours, epoch plans and the step's random draws.

All randomness of a step (timesteps, noise, sample ids, label dropout) is drawn for the *whole global
batch* from a generator keyed by ``(seed, step)``; each rank then takes its slice. So the result does
not depend on the world size or the accumulation count, and a resumed run needs only the step number
to continue with exactly the same draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..grouping.plans import PlannedBatch, build_epoch_plan, shard_batch
from ..transport.losses import sample_timesteps

if TYPE_CHECKING:  # annotations only: the composed config imports this package's section
    from ..config import GroupDiffConfig


def load_dataset(config: GroupDiffConfig) -> tuple[Any, torch.Tensor]:
    """The dataset ``data.dataset`` names as a *source* (items read by index, see :func:`as_source`) and its
    labels, checked against the model. Only the built-in data is held in memory as one tensor; image folders
    decode per item and shard versions (local or ``s3://``) are memory-mapped, so memory does not grow with the set."""
    data = config.data
    if data.dataset == "fmnist":
        from ..data.fmnist import load_fmnist

        images, labels = load_fmnist(data.split, data.image_size, data.limit)
        source = as_source(images)
    else:
        from ..data.datasets import build_dataset

        source = build_dataset(data)  # a missing or empty root fails here, naming the path
        if len(source) == 0:
            raise ValueError(f"data.dataset={data.dataset!r}: {data.root} holds no items")
        labels = torch.as_tensor(np.asarray(source.labels), dtype=torch.long)
    check_dataset(config, source, labels)
    return source, labels


def as_source(images) -> Any:
    """A tensor of images (N, ...) as a source; datasets of :func:`~groupdiff.data.datasets.build_dataset`
    are sources already (``len``, ``fetch``/``__getitem__``, ``item_shape``)."""
    if isinstance(images, torch.Tensor):
        from ..data.datasets import TensorImageDataset

        return TensorImageDataset(images, np.zeros(len(images), dtype=np.int64), 0, "")
    return images


def check_dataset(config: GroupDiffConfig, source, labels: torch.Tensor) -> None:
    """Raise ValueError when the items or labels cannot feed the configured model."""
    from ..data.datasets import item_shape

    source = as_source(source)
    model = config.model
    shape = (len(source), *item_shape(source))
    if len(shape) != 4 or shape[1] != model.in_channels or shape[-1] != model.input_size:
        raise ValueError(
            f"data.dataset={config.data.dataset!r} gives images of shape {shape} but model expects "
            f"(N, {model.in_channels}, {model.input_size}, {model.input_size}) (model.in_channels / model.input_size "
            f"vs the dataset's channels and data.image_size)"
        )
    if labels.shape != (shape[0],):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {shape[0]} images")
    if labels.numel() and (labels.min() < 0 or labels.max() >= model.num_classes):
        raise ValueError(f"labels span [{int(labels.min())}, {int(labels.max())}] but model.num_classes={model.num_classes}")
    if shape[0] < config.train.global_batch_images:
        raise ValueError(
            f"the dataset holds {shape[0]} images, fewer than one global batch "
            f"(train.global_batch_images={config.train.global_batch_images})"
        )


def class_neighbours(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(num_items, k) same-class neighbours: the next ``k`` items of a seeded per-class shuffle (cyclic), -1 padded.

    The stand-in for a mined group table: groups become "same class" groups (DESIGN 1.5 ``class`` mode).
    """
    labels = np.asarray(labels)
    out = np.full((len(labels), k), -1, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        m = len(members)
        take = min(k, m - 1)
        if take <= 0:
            continue
        offsets = np.arange(1, take + 1)
        out[members, :take] = members[(np.arange(m)[:, None] + offsets[None, :]) % m]
    return out


def load_group_table(path: str | Path, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """``build_epoch_plan`` keyword arguments (``neighbours``, ``eligible``) from a ``groupdiff mine`` table.

    The table must have been mined on this dataset: its labels must equal the dataset's labels.
    """
    from ..grouping.table import GroupTable

    table = GroupTable.load(path)
    ours = labels.numpy()
    if table.labels.shape != ours.shape or not np.array_equal(table.labels, ours):
        raise ValueError(
            f"group table {str(path)!r} was mined on another dataset ({len(table.labels)} items) than this run's "
            f"data ({len(ours)} items, data.split/data.limit); mine it on the same data"
        )
    return table.plan_kwargs()


class EpochPlans:
    """Caches the current epoch's plan; plans are pure functions of (variant, seed, epoch)."""

    def __init__(self, config: GroupDiffConfig, num_items: int, grouping: dict[str, np.ndarray] | None):
        self.train = config.train
        self.num_items = num_items
        self.grouping = grouping or {}
        self._epoch: int | None = None
        self._plan: list[PlannedBatch] = []

    def plan(self, epoch: int) -> list[PlannedBatch]:
        """The batches of ``epoch``."""
        if epoch != self._epoch:
            t = self.train
            self._plan = build_epoch_plan(
                t.variant, self.num_items, t.global_batch_images, t.effective_group_size, epoch, t.seed,
                group_ratio=t.group_ratio, drop_last=True, **self.grouping,
            )
            if not self._plan:
                raise ValueError(f"epoch {epoch} has no batches: the dataset is too small for the global batch")
            self._epoch = epoch
        return self._plan


@dataclass
class StepBatch:
    """One rank's share of a step, ready for the loss: images, labels, timesteps, noise, sample ids."""

    x0: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    sample_ids: torch.Tensor | None
    group_size: int
    unconditional: bool
    indices: np.ndarray

    def micro(self, index: int, images: int) -> "StepBatch":
        """The ``index``-th micro batch of ``images`` images (whole groups by construction)."""
        s = slice(index * images, (index + 1) * images)
        ids = None if self.sample_ids is None else self.sample_ids[s]
        return StepBatch(self.x0[s], self.y[s], self.t[s], self.noise[s], ids, self.group_size,
                         self.unconditional, self.indices[s])


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator keyed by ``(seed, step, stream)``."""
    key = np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(key[0]) << 32 | int(key[1]))


def draw_step(
    batch: PlannedBatch, images, labels: torch.Tensor, config: GroupDiffConfig, step: int,
    rank: int, world_size: int, model: torch.nn.Module, x0: torch.Tensor | None = None,
) -> StepBatch:
    """Draw the global batch's randomness for ``step`` and return rank ``rank``'s contiguous share.

    ``images`` is a source (a tensor or a dataset, :func:`as_source`); ``x0`` is this rank's share of the items
    when a DataLoader has read them already (:mod:`groupdiff.train.loader`), else they are read here.

    Label dropout (probability ``model.class_dropout_prob``) is decided per group, as DESIGN 1.3 asks;
    GroupDiff-l group batches get the null label throughout. ``model`` supplies the null label and
    the sample-id draw (``s_embedder.random_ids``).
    """
    null_label = model.null_label
    n, groups = batch.group_size, batch.num_groups
    from ..data.datasets import fetch_items, item_shape

    source = as_source(images)
    gen = step_generator(config.train.seed, step)
    t = sample_timesteps(groups, n, config.transport, gen)
    noise = torch.randn((len(batch.indices), *item_shape(source)), generator=gen, dtype=torch.float32)
    ids = None
    if n > 1:
        ids = model.s_embedder.random_ids(groups, n, "cpu", gen)
    drop = (torch.rand(groups, generator=gen) < config.model.class_dropout_prob).repeat_interleave(n)
    index = torch.from_numpy(batch.indices)
    y = labels[index].clone()
    if batch.unconditional:
        y.fill_(null_label)
    else:
        y[drop] = null_label
    share = shard_batch(batch, rank, world_size)
    per = len(share.indices)
    s = slice(rank * per, (rank + 1) * per)
    if x0 is None:
        x0 = fetch_items(source, share.indices)
    return StepBatch(
        x0=x0, y=y[s], t=t[s], noise=noise[s], sample_ids=None if ids is None else ids[s],
        group_size=n, unconditional=batch.unconditional, indices=share.indices,
    )
