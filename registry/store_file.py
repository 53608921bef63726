"""The embedded object store: a local folder (``file://`` root).

Layout under the root: ``<key>`` holds the data, ``.meta/<key>.json`` its recorded size and sha256,
``.partial/`` in-flight writes. A write goes to ``.partial/`` and is renamed into place with
``os.replace`` (atomic on one filesystem) only once complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

from groupdiff.atomic import atomic_write, write_bytes_atomic

from .objectstore import (
    CHUNK, PARTIAL_DIR, HashingReader, ObjectInfo, ObjectNotFoundError, ObjectStore, ObjectStoreError,
    user_key, verify,
)
from .uri import check_key

META_DIR = ".meta"


def _copy(reader: HashingReader, out: BinaryIO, size: int) -> None:
    """Copy ``size`` bytes from ``reader`` to ``out``."""
    while reader.size < size:
        block = reader.read(min(CHUNK, size - reader.size))
        if not block:
            raise IOError(f"stream ended after {reader.size} of {size} bytes")
        out.write(block)


class FileStore(ObjectStore):
    """Objects as files under ``root`` (created on first write)."""

    def __init__(self, root: str | Path):
        self.path = Path(root).resolve()
        self.root = self.path.as_uri()

    def uri(self, key: str) -> str:
        return (self.path / user_key(key)).as_uri()

    def _meta(self, key: str) -> Path:
        return self.path / META_DIR / f"{key}.json"

    def put_stream(self, key: str, stream: BinaryIO, size: int) -> ObjectInfo:
        user_key(key)
        partial = self.path / PARTIAL_DIR
        reader = self._reader(stream, size, f"put {key}")
        try:
            with atomic_write(self.path / key, tmp_dir=partial) as out:
                _copy(reader, out, size)
                info = ObjectInfo(key, reader.size, reader.hash.hexdigest(), self.uri(key))
                meta = json.dumps({"size": info.size, "sha256": info.sha256}).encode()
                # record first, then publish the data: a crash in between leaves a record without data
                # (the key is absent) or, on overwrite, a record that no longer matches (detected on read)
                write_bytes_atomic(self._meta(key), meta, tmp_dir=partial)
        finally:
            reader.close()
        return info

    def stat(self, key: str) -> ObjectInfo:
        user_key(key)
        data = self.path / key
        if not data.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.root}")
        try:
            record = json.loads(self._meta(key).read_text())
        except FileNotFoundError:
            raise ObjectStoreError(
                f"object {data.as_uri()} has no checksum record ({self._meta(key)}); it was not written "
                "through the store, re-upload it with put_file"
            ) from None
        return ObjectInfo(key, int(record["size"]), str(record["sha256"]), data.as_uri())

    def get_file(self, key: str, dest: str | Path) -> ObjectInfo:
        info = self.stat(key)
        with (self.path / key).open("rb") as src:
            actual = os.fstat(src.fileno()).st_size
            reader = self._reader(src, actual, f"get {key}")
            try:
                with atomic_write(dest) as out:  # published only once the checksum matches
                    _copy(reader, out, actual)
                    verify(key, info, reader.size, reader.hash.hexdigest())
            finally:
                reader.close()
        return info

    def list(self, prefix: str = "") -> list[str]:
        check_key(prefix.strip("/"), allow_empty=True)
        base = self.path / prefix.strip("/") if prefix.strip("/") else self.path
        if not base.exists():
            return []
        out = []
        for path in base.rglob("*"):
            rel = path.relative_to(self.path).as_posix()
            if path.is_file() and not rel.startswith("."):
                out.append(rel)
        return sorted(out)

    def delete(self, key: str) -> None:
        user_key(key)
        (self.path / key).unlink(missing_ok=True)
        self._meta(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        self.stat(key)
        return self.uri(key)
