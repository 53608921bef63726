"""Atomic writes: a file (or folder) appears under its final name complete, or not at all.

Every writer in the tree goes through here. The content is written to a temporary name in the same
folder (same filesystem, so the rename is atomic), flushed to disk with ``fsync`` and renamed onto the
final name with ``os.replace`` only when the ``with`` block succeeds; on an error the temporary is
removed and the previous file, if any, is left as it was. A reader therefore never sees a half-written
file, and a run killed mid-write leaves at most a hidden ``.<name>.tmp-*`` file behind (see
:func:`temp_prefix` for cleaning those).

>>> with atomic_write(path) as f:            # doctest: +SKIP
...     f.write(data)
>>> with atomic_path(path) as tmp:           # doctest: +SKIP
...     np.savez(tmp, **arrays)              # a library's own save function writes the temp path
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

TEMP_MARK = ".tmp-"


def temp_prefix(path: str | Path) -> str:
    """Name prefix of the temporaries written for ``path`` (``.<name>.tmp-``), to find or skip leftovers."""
    return f".{Path(path).name}{TEMP_MARK}"


def _temp_for(path: Path, tmp_dir: Path | None) -> Path:
    # the final suffix is kept so that savers which pick the format from it (PNG, npz) still do
    return (tmp_dir or path.parent) / f"{temp_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, tmp_dir: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path for ``path`` that the caller (or a library's save function) writes; on
    success it is fsync'd and renamed onto ``path``, on error removed. ``tmp_dir`` puts the temporary in
    another folder of the same filesystem (default: beside ``path``). Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    tmp = _temp_for(path, Path(tmp_dir) if tmp_dir is not None else None)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic write of {str(path)!r}: nothing was written to its temporary {str(tmp)!r}")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        _remove(tmp)  # gone already after a successful replace


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", tmp_dir: str | Path | None = None,
                 **open_kwargs: Any) -> Iterator[IO]:
    """Yield an open temporary file (``mode`` 'wb' or 'w'); on success it is flushed, fsync'd and renamed
    onto ``path``, on error removed (see :func:`atomic_path` for ``tmp_dir``)."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_write mode={mode!r}: expected a write mode ('wb' or 'w')")
    with atomic_path(path, tmp_dir) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()


def write_bytes_atomic(path: str | Path, data: bytes, tmp_dir: str | Path | None = None) -> Path:
    """``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "wb", tmp_dir) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 2, sort_keys: bool = False,
                      default: Any = str) -> Path:
    """``json.dumps(obj, indent=2)`` (no trailing newline) to ``path`` atomically; returns ``path``.
    ``default`` turns values JSON does not know into something it does (``str`` unless given)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default))


def replace_dir(src: str | Path, dest: str | Path) -> Path:
    """Rename the complete folder ``src`` onto ``dest`` (same filesystem). An existing ``dest`` is first
    moved aside and deleted after the rename, so ``dest`` always names a complete folder."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        old = dest.with_name(f".old-{dest.name}")
        _remove(old)
        os.replace(dest, old)
        os.replace(src, dest)
        _remove(old)
    else:
        os.replace(src, dest)
    return dest


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (see
    :func:`replace_dir`), on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_for(path, None)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        _remove(tmp)
