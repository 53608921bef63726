"""Dataset versions as shards of fixed-size records, read by index from a local folder or the object store.

Layout of one version (a folder, or a prefix ``s3://bucket/datasets/<name>/<digest>/``)::

    dataset.json        manifest (format, kind, counts, item shape, shard list with sha256): written last
    labels.npy          int64 labels
    items-00000.npy     uint8 (rows, C, S, S) preprocessed pixels, or float32 (rows, C, s, s) latents

Item ``i`` is row ``i % shard_size`` of shard ``i // shard_size``: random access by index, which the epoch
plans' groups need (a group's members are anywhere in the set). Local shards are read in place; shards of an
``s3://`` version are fetched whole on first use into ``cache_dir`` (atomically, so DataLoader workers and the
ranks of one machine share them). Rows are read with positioned reads, so a process's memory does not grow with
the set.

Why a format of our own: bench/data.py measures the candidates here. ``mosaicml-streaming`` does not install
beside numpy >= 2.2; ``litdata``'s random ``dataset[i]`` costs ~2 ms per item (measured ~500 items/s on local
disk); ``webdataset`` reads tar shards front to back, so random group access would hold whole shards in memory.
A ``.npy`` shard of fixed-size rows is read at any index by offset, with numpy alone.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..atomic import write_json_atomic
from .digest import digest_json, file_digest
from .remote import fetch_file, is_remote, open_remote

FORMAT = "groupdiff-shards/1"
MANIFEST = "dataset.json"
LABELS = "labels.npy"
SHARD_PATTERN = "items-{index:05d}.npy"
Kind = Literal["pixels", "latents"]
DTYPES: dict[str, str] = {"pixels": "uint8", "latents": "float32"}
DEFAULT_CACHE = Path.home() / ".cache" / "groupdiff" / "shards"


@dataclass
class ShardManifest:
    """What ``dataset.json`` holds: enough to read any item and to name the content by a digest."""

    kind: Kind
    num_items: int
    shard_size: int
    item_shape: list[int]
    classes: list[str]
    shards: list[dict[str, Any]]  # [{"file", "rows", "sha256"}] in order
    labels_sha256: str
    source: dict[str, Any] = field(default_factory=dict)  # where the data came from (path, corrupt files, ...)
    preprocess: dict[str, Any] = field(default_factory=dict)  # image size, crop, VAE digest + scaling factor
    format: str = FORMAT

    @property
    def digest(self) -> str:
        """Content digest: the bytes of every shard and the labels, and how they were made (not where from)."""
        return digest_json({"format": self.format, "kind": self.kind, "item_shape": self.item_shape,
                            "classes": self.classes, "shards": [s["sha256"] for s in self.shards],
                            "labels": self.labels_sha256, "preprocess": self.preprocess})

    def counts(self, labels: np.ndarray) -> dict[str, int]:
        """Images per class name."""
        per = np.bincount(labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, per)}

    def to_json(self) -> dict[str, Any]:
        """The manifest as written, with its digest."""
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "digest": self.digest}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> "ShardManifest":
        """Parse a manifest, naming ``where`` when it is not one of ours."""
        if data.get("format") != FORMAT:
            raise ValueError(f"{where} is not a groupdiff dataset manifest (format {data.get('format')!r}, "
                             f"expected {FORMAT!r})")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        manifest = cls(**fields)
        if data.get("digest") not in (None, manifest.digest):
            raise ValueError(f"{where}: recorded digest {data['digest']} does not match its content ({manifest.digest})")
        return manifest


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return SHARD_PATTERN.format(index=index)


def is_sharded(root: str | Path) -> bool:
    """Whether ``root`` is a shard dataset (always assumed for object store roots; checked for folders)."""
    return is_remote(root) or (Path(root) / MANIFEST).is_file()


class ShardWriter:
    """Writes a version folder: rows appended in order, shards of ``shard_size`` rows, the manifest last.

    Each shard is written under a temporary name and renamed when complete; ``close`` writes the labels and
    then ``dataset.json``, so a folder without a manifest is an unfinished write, never a readable version.
    """

    def __init__(self, out_dir: str | Path, kind: Kind, item_shape: tuple[int, ...], classes: list[str],
                 shard_size: int):
        if kind not in DTYPES:
            raise ValueError(f"kind={kind!r}; expected one of {sorted(DTYPES)}")
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size}; expected >= 1")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.kind, self.item_shape, self.classes, self.shard_size = kind, tuple(item_shape), list(classes), shard_size
        self.dtype = np.dtype(DTYPES[kind])
        self._rows: list[np.ndarray] = []
        self._buffered = 0
        self._labels: list[int] = []
        self.shards: list[dict[str, Any]] = []

    def add(self, items: np.ndarray, labels: np.ndarray) -> None:
        """Append rows (n, *item_shape) of the kind's dtype and their labels."""
        if items.shape[1:] != self.item_shape or items.dtype != self.dtype:
            raise ValueError(f"rows of shape {items.shape[1:]} / {items.dtype}; this dataset holds "
                             f"{self.item_shape} / {self.dtype}")
        self._rows.append(items)
        self._buffered += len(items)
        self._labels += [int(y) for y in labels]
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, rows: int) -> None:
        block = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        shard, rest = block[:rows], block[rows:]
        self._rows, self._buffered = ([rest] if len(rest) else []), len(rest)
        path = self.out / shard_name(len(self.shards))
        from .shards import save_atomic

        save_atomic(path, np.ascontiguousarray(shard))
        self.shards.append({"file": path.name, "rows": int(len(shard)), "sha256": file_digest(path)})

    def close(self, source: dict[str, Any], preprocess: dict[str, Any]) -> ShardManifest:
        """Write the last shard, the labels and the manifest; returns the manifest."""
        if self._buffered:
            self._flush(self._buffered)
        if not self._labels:
            raise ValueError(f"{self.out}: no items were written")
        from .shards import save_atomic

        labels = np.asarray(self._labels, dtype=np.int64)
        save_atomic(self.out / LABELS, labels)
        manifest = ShardManifest(self.kind, len(labels), self.shard_size, list(self.item_shape), self.classes,
                                 self.shards, file_digest(self.out / LABELS), source, preprocess)
        write_json_atomic(self.out / MANIFEST, {**manifest.to_json(), "counts": manifest.counts(labels)},
                          sort_keys=True, indent=1)
        return manifest


class ShardedDataset(torch.utils.data.Dataset):
    """Items of a shard version (local folder or ``s3://`` prefix) as float32 tensors, pixels in [-1, 1].

    Attributes as every dataset of :func:`~groupdiff.data.datasets.build_dataset`: ``labels``, ``num_classes``,
    ``channels``, ``digest``, ``classes``; plus ``kind`` and ``fetch(indices)`` for whole batches.
    """

    def __init__(self, root: str | Path, limit: int = 0, cache_dir: str | Path | None = None):
        self.root = str(root).rstrip("/")
        self.remote = is_remote(self.root)
        self._store_pid = os.getpid()
        if self.remote:
            self._store = open_remote(self.root)
            self.manifest = _remote_manifest(self._store, self.root)
            # keyed by content: a cached shard can only ever belong to this exact version
            self._local = Path(cache_dir or DEFAULT_CACHE) / self.manifest.digest
        else:
            self._store, self._local = None, Path(self.root)
            manifest_path = self._local / MANIFEST
            if not manifest_path.is_file():
                raise FileNotFoundError(f"{self.root} holds no {MANIFEST}: not a dataset written by `groupdiff ingest`")
            self.manifest = ShardManifest.from_json(json.loads(manifest_path.read_text()), str(manifest_path))
        labels = np.load(self._file(LABELS))
        if len(labels) != self.manifest.num_items:
            raise ValueError(f"{self.root}: {len(labels)} labels for {self.manifest.num_items} items")
        self.limit = limit
        self.labels = labels[:limit] if limit else labels
        self.kind = self.manifest.kind
        self.classes = self.manifest.classes
        self.num_classes = len(self.classes)
        self.channels = self.manifest.item_shape[0]
        self.item_shape = tuple(self.manifest.item_shape)
        whole = not limit or limit >= self.manifest.num_items  # a limit that keeps every item is the version itself
        self.digest = self.manifest.digest if whole else digest_json([self.manifest.digest, limit])
        self._open: dict[int, tuple[int, int]] = {}

    def _file(self, name: str) -> Path:
        if not self.remote:
            return self._local / name
        if self._store is None or self._store_pid != os.getpid():
            # a forked DataLoader worker must not share the parent's connection pool (its sockets)
            self._store, self._store_pid = open_remote(self.root), os.getpid()
        expected = self.manifest.labels_sha256 if name == LABELS else next(
            s["sha256"] for s in self.manifest.shards if s["file"] == name)

        def check(path: Path) -> None:  # a damaged download is never renamed into the cache
            if file_digest(path) != expected:
                raise ValueError(f"{self.root}/{name}: downloaded bytes do not match the manifest's sha256 {expected}")

        return fetch_file(self._store, name, self._local / name, check)

    def _shard(self, index: int) -> tuple[int, int]:
        """(open file descriptor, byte offset of row 0) of shard ``index``, its header checked against the manifest."""
        found = self._open.get(index)
        if found is None:
            entry = self.manifest.shards[index]
            path = self._file(entry["file"])
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                offset = f.tell()
            if fortran or dtype != np.dtype(DTYPES[self.kind]) or tuple(shape) != (entry["rows"], *self.item_shape):
                raise ValueError(f"{path}: holds {dtype} {tuple(shape)}; the manifest says {DTYPES[self.kind]} "
                                 f"{(entry['rows'], *self.item_shape)}")
            found = self._open[index] = (os.open(path, os.O_RDONLY), offset)
        return found

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Stored rows (uint8 pixels or float32 latents) of ``indices``, in order.

        Each row is one positioned read (``os.pread``) of its bytes, not a memory map: a reader's memory holds
        only the rows it was asked for, whatever the size of the set (the OS page cache keeps hot shards)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices span [{indices.min()}, {indices.max()}]; the dataset holds {len(self)} items")
        out = np.empty((len(indices), *self.item_shape), dtype=DTYPES[self.kind])
        size, row_bytes = self.manifest.shard_size, out[0].nbytes if len(out) else 0
        flat = out.reshape(len(indices), -1).view(np.uint8)
        for k, i in enumerate(indices.tolist()):
            fd, offset = self._shard(i // size)
            data = os.pread(fd, row_bytes, offset + (i % size) * row_bytes)
            if len(data) != row_bytes:
                raise ValueError(f"{self.root}: shard {i // size} ends before item {i} (truncated file)")
            flat[k] = np.frombuffer(data, dtype=np.uint8)
        return out

    def fetch(self, indices: np.ndarray) -> torch.Tensor:
        """Float32 items of ``indices`` (pixels mapped to [-1, 1] with the same operations as the image folder)."""
        x = torch.from_numpy(self.rows(indices).astype(np.float32))
        return x.div(127.5).sub(1.0) if self.kind == "pixels" else x

    def report(self) -> dict:
        """Counts for logging."""
        return {"images": len(self), "skipped": len(self.manifest.source.get("corrupt", [])),
                "skipped_files": list(self.manifest.source.get("corrupt", [])), "converted": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.fetch(np.asarray([index]))[0], int(self.labels[index])

    def __getstate__(self) -> dict:  # DataLoader workers (spawn) reopen the store and the shard files
        state = dict(self.__dict__)
        state["_open"], state["_store"] = {}, None
        return state

    def __del__(self) -> None:
        for fd, _ in getattr(self, "_open", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


def _remote_manifest(store, root: str) -> ShardManifest:
    """The manifest of an object store version, read fresh (a few KiB) so the cache is keyed by its digest."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MANIFEST
        try:
            store.get_file(MANIFEST, path)
        except Exception as exc:  # the store's own error names the key; say what was expected
            raise FileNotFoundError(f"data.root={root!r}: no {MANIFEST} there ({exc}); expected a dataset version "
                                    "written by `groupdiff ingest`") from exc
        return ShardManifest.from_json(json.loads(path.read_text()), f"{root}/{MANIFEST}")
