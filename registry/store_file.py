"""The embedded object store: a local folder (``file://`` root).

Layout under the root: ``<key>`` holds the data, ``.meta/<key>.json`` its recorded size and sha256,
``.partial/`` in-flight writes. A write goes to ``.partial/`` and is renamed into place with
``os.replace`` (atomic on one filesystem) only once complete.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from .objectstore import (
    CHUNK, PARTIAL_DIR, HashingReader, ObjectInfo, ObjectNotFoundError, ObjectStore, ObjectStoreError,
    user_key, verify,
)
from .uri import check_key

META_DIR = ".meta"


def _write_atomic(dest: Path, stream: BinaryIO, size: int, partial_dir: Path,
                  reader: HashingReader | None = None) -> HashingReader:
    """Copy ``size`` bytes from ``stream`` to ``dest`` through a temporary file; returns the hashing reader."""
    partial_dir.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir / uuid.uuid4().hex
    reader = reader or HashingReader(stream)
    try:
        with tmp.open("wb") as out:
            while reader.size < size:
                block = reader.read(min(CHUNK, size - reader.size))
                if not block:
                    raise IOError(f"stream ended after {reader.size} of {size} bytes")
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    finally:
        reader.close()
        tmp.unlink(missing_ok=True)
    return reader


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
        tmp_name = f"{uuid.uuid4().hex}.data"
        staged = partial / tmp_name
        try:
            reader = _write_atomic(staged, stream, size, partial, self._reader(stream, size, f"put {key}"))
            info = ObjectInfo(key, reader.size, reader.hash.hexdigest(), self.uri(key))
            meta = json.dumps({"size": info.size, "sha256": info.sha256}).encode()
            import io

            # record first, then publish the data: a crash in between leaves a record without data
            # (the key is absent) or, on overwrite, a record that no longer matches (detected on read)
            _write_atomic(self._meta(key), io.BytesIO(meta), len(meta), partial)
            (self.path / key).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, self.path / key)
        finally:
            staged.unlink(missing_ok=True)
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
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
        try:
            with (self.path / key).open("rb") as src:
                actual = os.fstat(src.fileno()).st_size
                reader = _write_atomic(staged, src, actual, dest.parent, self._reader(src, actual, f"get {key}"))
            verify(key, info, reader.size, reader.hash.hexdigest())
            os.replace(staged, dest)
        finally:
            staged.unlink(missing_ok=True)
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
