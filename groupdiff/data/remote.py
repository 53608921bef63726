"""Reading dataset files from a local folder or from the object store (``s3://bucket/prefix``).

The library never imports the object store client (the layers of the import contracts: ``registry`` sits
above ``groupdiff``), so an ``s3://`` root is opened through a factory named by
``$GROUPDIFF_STORE_FACTORY`` (``module:function``, called with the root URI, returning an object with
``get_file(key, dest)``). The ``groupdiff`` console script and the flows set it to
``registry.stores:open_store``; the same pattern plugs the experiment tracker (``$GROUPDIFF_TRACKER``).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Protocol

from ..atomic import atomic_path

STORE_FACTORY_ENV = "GROUPDIFF_STORE_FACTORY"
REMOTE_SCHEMES = ("s3://",)


class FileGetter(Protocol):
    """What a dataset reader needs of an object store."""

    def get_file(self, key: str, dest: str | Path):  # noqa: D102 - the store's own method
        ...


def is_remote(root: str | Path) -> bool:
    """Whether ``root`` names an object store prefix rather than a local folder."""
    return str(root).startswith(REMOTE_SCHEMES)


def open_remote(root: str) -> FileGetter:
    """The object store at ``root`` through the factory ``$GROUPDIFF_STORE_FACTORY`` names."""
    spec = os.environ.get(STORE_FACTORY_ENV, "")
    if not spec:
        raise ValueError(
            f"data.root={root!r} is in an object store, but ${STORE_FACTORY_ENV} is not set; run through the "
            f"`groupdiff` console script or a flow (they set it), or set {STORE_FACTORY_ENV}=registry.stores:open_store"
        )
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"{STORE_FACTORY_ENV}={spec!r}; expected 'module:function'")
    return getattr(importlib.import_module(module), name)(root)


def fetch_file(store: FileGetter, key: str, dest: Path, check: Callable[[Path], None] | None = None) -> Path:
    """Download ``key`` to ``dest`` unless it is there already; concurrent fetchers (DataLoader workers, ranks of
    one machine) each write a private temporary file and the first rename wins, so a reader never sees a
    partial file. ``check(path)`` may reject the downloaded bytes before they get their name."""
    if dest.exists():
        return dest
    with atomic_path(dest) as tmp:
        store.get_file(key, tmp)
        if check is not None:
            check(tmp)
    return dest
