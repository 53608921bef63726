"""Group tables: the artefact of ``groupdiff mine`` (npz), keyed by digest and carrying its config.

Arrays (``num_items`` rows):

* ``neighbours`` (n, K) int64: candidates per anchor, best first, -1 padded; the first ones passed tau,
  then any filled ones. This is what :func:`groupdiff.grouping.plans.build_epoch_plan` consumes.
* ``similarity`` (n, K) float32: exact cosine of each candidate to its anchor (NaN where padded).
* ``filled`` (n, K) bool: candidate added by the ``fill`` rule (did not pass tau).
* ``eligible`` (n,) bool: the anchor may anchor a group (False only under ``fill='drop'``).
* ``groups`` (n, N) int64: a static group per anchor (anchor first) by the ``draw`` rule, -1 rows when dropped.
* ``labels`` (n,) int64.

``meta`` (a JSON string in the npz) holds the digest, the config, the source digests and statistics.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write


@dataclass
class GroupTable:
    """Mined candidates, static groups and their statistics."""

    neighbours: np.ndarray
    similarity: np.ndarray
    filled: np.ndarray
    eligible: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self.meta["digest"]

    @property
    def group_size(self) -> int:
        return int(self.groups.shape[1])

    def plan_kwargs(self) -> dict:
        """Keyword arguments for ``build_epoch_plan``: ``neighbours`` and ``eligible``."""
        return {"neighbours": self.neighbours, "eligible": self.eligible}

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (.npz) atomically."""
        path = Path(path)
        with atomic_write(path) as f:
            np.savez(f, neighbours=self.neighbours, similarity=self.similarity, filled=self.filled,
                     eligible=self.eligible, groups=self.groups, labels=self.labels,
                     meta=np.asarray(json.dumps(self.meta, sort_keys=True, default=str)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GroupTable":
        """Read a table written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"group table {path} does not exist; run `groupdiff mine --out {path}` first")
        with np.load(path, allow_pickle=False) as z:
            missing = {"neighbours", "similarity", "filled", "eligible", "groups", "labels", "meta"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a group table: missing arrays {sorted(missing)}")
            return cls(z["neighbours"], z["similarity"], z["filled"], z["eligible"], z["groups"], z["labels"],
                       json.loads(str(z["meta"])))
