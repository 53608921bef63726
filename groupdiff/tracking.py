"""Metric tracking protocol: ``groupdiff`` logs through it, ``registry/`` plugs MLflow in.

``groupdiff`` never imports MLflow; a stage receives any object implementing :class:`Tracker`.
The default :class:`JsonlTracker` appends one JSON object per call to a file (and optionally echoes
to the console); :class:`NullTracker` drops everything (non-zero ranks).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """What a stage may log. Implementations must be cheap to call and safe to call on rank 0 only."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record configuration values (flattened ``section.field`` keys)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record scalar metrics at a step."""

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """Record a file (image grid, plot, table) produced by the stage."""

    def close(self) -> None:
        """Flush and release resources."""


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"section.field": value}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


class NullTracker:
    """Drops everything (for ranks other than 0 and for tests)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlTracker:
    """Appends ``{"kind": ..., "time": ..., ...}`` lines to ``path``; the default local tracker."""

    def __init__(self, path: str | Path, echo: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self.echo = echo

    def _write(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        if self.echo:
            print(json.dumps(record, default=str))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._write({"kind": "params", "params": flatten(params)})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._write({"kind": "metrics", "step": step, "metrics": {k: float(v) for k, v in metrics.items()}})

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        self._write({"kind": "artifact", "path": str(path), "name": name or Path(path).name})

    def close(self) -> None:
        self._file.close()
