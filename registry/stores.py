"""Open the object store a root URI names: ``file://`` -> :class:`~registry.store_file.FileStore`, ``s3://`` ->
:class:`~registry.store_s3.S3Store`. The factory lives apart from the interface (``registry.objectstore``) so
that the backends import the interface and the factory imports the backends: no import circle."""
from __future__ import annotations

import os

from .config import ENV_STORE_ROOT, MIB, ObjectStoreConfig
from .objectstore import ObjectStore
from .store_file import FileStore
from .uri import parse_uri


def open_store(root: str | None = None, config: ObjectStoreConfig | None = None) -> ObjectStore:
    """Open the store at ``root``, else ``config.root``, else ``$GROUPDIFF_STORE_ROOT``, else the default
    folder: ``file://`` -> local folder, ``s3://`` -> S3/MinIO. Without ``config`` the transfer settings
    (retries, timeouts, part size) come from ``$GROUPDIFF_STORE_<FIELD>`` (:meth:`ObjectStoreConfig.from_env`)."""
    if root is None and config is None:
        root = os.environ.get(ENV_STORE_ROOT)
    config = config or ObjectStoreConfig.from_env()
    parsed = parse_uri(root or config.root)
    if parsed.scheme == "file":
        store = FileStore(parsed.path)
        store.progress_min_bytes = config.progress_min_mib * MIB
        return store
    from .store_s3 import S3Store  # minio is loaded only for s3:// roots

    return S3Store(parsed.bucket, parsed.prefix, config)
