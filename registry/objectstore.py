"""One interface over object-store URIs: ``s3://bucket/prefix`` (MinIO or any S3) and ``file://path``.

Every write is atomic (data goes to a temporary key and becomes visible under its final key only when
complete), every object carries its sha256, and every read verifies size and checksum. Keys are relative
to the store root and follow the layout of :mod:`registry.layout`.

>>> from registry.stores import open_store           # doctest: +SKIP
>>> store = open_store("file:///tmp/store")          # doctest: +SKIP
>>> info = store.put_file("weights/sit.pt", "sit.pt")  # doctest: +SKIP
>>> store.get_file("weights/sit.pt", "copy.pt")        # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .config import MIB, ObjectStoreConfig
from .uri import check_key

# In-flight uploads live under this first key part. Every first key part starting with '.' is reserved
# for the store's own bookkeeping: never listed, never accepted as a user key.
PARTIAL_DIR = ".partial"
CHUNK = 1024 * 1024


class ObjectStoreError(RuntimeError):
    """A store operation failed (unreachable endpoint, rejected credentials, ...)."""


class ObjectNotFoundError(ObjectStoreError, FileNotFoundError):
    """The key does not exist in the store."""


class ChecksumMismatchError(ObjectStoreError):
    """The bytes read do not match the size/sha256 recorded when the object was written."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    sha256: str
    uri: str


class HashingReader:
    """Wraps a binary stream: counts and hashes bytes as they are read (so uploads hash in one pass),
    optionally advancing a tqdm progress bar of ``total`` bytes."""

    def __init__(self, stream: BinaryIO, total: int | None = None, desc: str | None = None, progress: bool = False):
        self._stream = stream
        self.hash = hashlib.sha256()
        self.size = 0
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.hash.update(data)
        self.size += len(data)
        if self._bar is not None:
            self._bar.update(len(data))
        return data

    def close(self) -> None:
        """Close the progress bar (the wrapped stream stays open)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def user_key(key: str) -> str:
    """Validate a key given by a caller (well formed, first part not a reserved '.'-folder)."""
    check_key(key)
    if key.startswith("."):
        raise ValueError(f"object key {key!r} starts with '.': such top-level folders are reserved for the store")
    return key


def verify(key: str, expected: ObjectInfo, size: int, sha256: str) -> None:
    """Raise :class:`ChecksumMismatchError` when the bytes read differ from what was recorded."""
    if size != expected.size or sha256 != expected.sha256:
        raise ChecksumMismatchError(
            f"object {expected.uri}: read {size} bytes with sha256 {sha256}, but the store recorded "
            f"{expected.size} bytes with sha256 {expected.sha256}; the object is corrupt or was modified"
        )


class ObjectStore(ABC):
    """Operations common to every backend. Keys are '/'-separated and relative to the store root."""

    root: str
    progress_min_bytes: int = ObjectStoreConfig().progress_min_mib * MIB

    def _reader(self, stream: BinaryIO, size: int, what: str) -> HashingReader:
        """A hashing reader with a progress bar when ``size`` is at least ``progress_min_bytes``."""
        return HashingReader(stream, size, what, progress=size >= self.progress_min_bytes)

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, size: int) -> ObjectInfo:
        """Upload exactly ``size`` bytes from ``stream`` atomically; a failure leaves no object at ``key``."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and recorded sha256 of ``key``; :class:`ObjectNotFoundError` if absent."""

    @abstractmethod
    def get_file(self, key: str, dest: str | Path) -> ObjectInfo:
        """Download ``key`` to ``dest`` (atomically), verifying size and sha256."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under ``prefix`` (a folder-like prefix such as ``checkpoints/run1``)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is absent)."""

    @abstractmethod
    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        """A URL that downloads ``key`` without credentials (``file://`` URL for local stores)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Full URI of ``key`` (``s3://bucket/prefix/key`` or ``file:///...``)."""

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        """Upload a local file atomically (multipart above the configured part size on S3)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path}: not a file")
        with path.open("rb") as f:
            return self.put_stream(key, f, path.stat().st_size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Upload ``data`` atomically."""
        import io

        return self.put_stream(key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        """Read ``key`` fully, verifying size and sha256."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "object"
            self.get_file(key, dest)
            return dest.read_bytes()

    def exists(self, key: str) -> bool:
        """True when ``key`` is present."""
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def put_dir(self, prefix: str, folder: str | Path) -> list[ObjectInfo]:
        """Upload every file under ``folder`` to ``prefix/<relative path>`` (each file atomically)."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return [self.put_file(f"{prefix.rstrip('/')}/{p.relative_to(folder).as_posix()}", p) for p in files]

    def get_dir(self, prefix: str, folder: str | Path) -> list[ObjectInfo]:
        """Download every object under ``prefix`` into ``folder`` (verifying each)."""
        prefix = prefix.rstrip("/")
        return [self.get_file(k, Path(folder) / k[len(prefix) + 1:]) for k in self.list(prefix)]
