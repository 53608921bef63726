"""The object-store layout of DESIGN 2.3: one function per kind of artefact, keys relative to the store root.

```
data/<name>
datasets/<name>/<digest>/<file>
embeddings/<encoder>/<digest>/<file>
groups/<digest>/<file>
checkpoints/<run>/<step>/<file>
samples/<run>/<eval>/samples.npz
weights/<name>
```
"""
from __future__ import annotations

import re

from .uri import check_key, join_key

_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _part(kind: str, value: str | int) -> str:
    text = str(value)
    if not _PART_RE.match(text) or ".." in text:
        raise ValueError(
            f"{kind} {value!r} cannot be part of an object key: use letters, digits, '_', '-', '.' "
            "(no '/', no '..', not starting with '.')"
        )
    return text


def data_key(name: str) -> str:
    """Key of a dataset file: ``data/<name>`` (``name`` may contain '/')."""
    return check_key(join_key("data", name))


def dataset_prefix(name: str, digest: str) -> str:
    """Folder of one dataset version written by ``groupdiff ingest``: ``datasets/<name>/<digest>``."""
    return join_key("datasets", _part("dataset name", name), _part("digest", digest))


def embeddings_prefix(encoder: str, digest: str) -> str:
    """Folder of one embedding set: ``embeddings/<encoder>/<digest>``."""
    return join_key("embeddings", _part("encoder", encoder), _part("digest", digest))


def groups_prefix(digest: str) -> str:
    """Folder of one group table: ``groups/<digest>``."""
    return join_key("groups", _part("digest", digest))


def checkpoint_prefix(run: str, step: int) -> str:
    """Folder of one checkpoint: ``checkpoints/<run>/<step>`` (step zero-padded to 8 digits so keys sort)."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return join_key("checkpoints", _part("run", run), f"{step:08d}")


def samples_key(run: str, eval_id: str) -> str:
    """Key of the generated samples of one evaluation: ``samples/<run>/<eval>/samples.npz``."""
    return join_key("samples", _part("run", run), _part("eval", eval_id), "samples.npz")


def weights_key(name: str) -> str:
    """Key of user-provided pretrained weights: ``weights/<name>``."""
    return check_key(join_key("weights", name))
