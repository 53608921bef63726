"""Content digests: short, stable names for datasets and artefacts (DESIGN 1.5, 2.3)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

DIGEST_CHARS = 16  # hex characters kept: 64 bits, plenty to key artefacts of one project


def digest_arrays(*arrays: np.ndarray, extra: Any = None) -> str:
    """sha256 over the dtype, shape and bytes of each array plus a JSON-able ``extra`` (e.g. transform params)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:DIGEST_CHARS]


def digest_json(obj: Any) -> str:
    """sha256 of a JSON-able object with sorted keys (configs, lists of digests)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:DIGEST_CHARS]


def file_digest(path, chunk: int = 1 << 24) -> str:
    """sha256 of a file's bytes, read in chunks (weights files can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]
