"""The manifest of a folder artefact: ``<prefix>/manifest.json``, written last, listing every file.

A folder artefact (an embedding set, a group table, a checkpoint, the classifier's weights) is published
file by file, then its manifest: the stage's own fields plus ``files``, one entry per file with its
relative ``name``, ``size`` and ``sha256``. A manifest in the store therefore means a complete artefact,
and its file list lets a reader (``flows.data_tasks.fetch``) or ``groupdiff check`` notice a file deleted
or changed behind the manifest's back. Manifests written before the list existed have no ``files``:
they are read as before and reported as unverifiable, not as errors.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from groupdiff.atomic import temp_prefix, write_text_atomic

from .objectstore import ObjectNotFoundError, ObjectStore, sha256_file

MANIFEST = "manifest.json"
FILES = "files"  # the manifest field listing the folder's files
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of a folder artefact as its manifest lists it."""

    name: str  # '/'-separated, relative to the artefact folder
    size: int | None  # None where the manifest lists no sizes (a dataset version's dataset.json)
    sha256: str  # a dataset version's dataset.json lists a prefix of it


class ManifestError(ValueError):
    """A manifest whose ``files`` list is not what :func:`publish_folder` writes."""


def listed_files(manifest: dict) -> list[FileEntry] | None:
    """The files a manifest lists, or None for an old manifest without a ``files`` list.

    Raises :class:`ManifestError` naming the bad entry when the list is malformed."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"a manifest must be a JSON object, got {type(manifest).__name__}: {manifest!r:.200}")
    if FILES not in manifest:
        return None
    raw = manifest[FILES]
    if not isinstance(raw, list):
        raise ManifestError(f"manifest field {FILES!r} must be a list of {{name, size, sha256}}, got {raw!r:.200}")
    entries = []
    for item in raw:
        ok = (isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]
              and not item["name"].startswith("/") and ".." not in item["name"].split("/")
              and isinstance(item.get("size"), int) and not isinstance(item.get("size"), bool) and item["size"] >= 0
              and isinstance(item.get("sha256"), str) and _SHA256_RE.match(item["sha256"]))
        if not ok:
            raise ManifestError(
                f"manifest entry {item!r:.200} is not a file entry: expected {{'name': relative path without '..', "
                "'size': int >= 0, 'sha256': 64 lowercase hex digits}")
        entries.append(FileEntry(item["name"], item["size"], item["sha256"]))
    return entries


def publish_folder(store: ObjectStore, prefix: str, folder: str | Path, fields: dict) -> dict:
    """Upload every file under ``folder`` to ``prefix/<relative name>`` (each atomically), then the manifest:
    ``fields`` plus the ``files`` list (name, size, sha256 of what was uploaded). The manifest object is
    written last, and a copy is left in ``folder``. Returns the manifest."""
    folder = Path(folder)
    prefix = prefix.rstrip("/")
    if FILES in fields:
        raise ValueError(f"manifest field {FILES!r} is written by publish_folder; the stage's fields must not set it "
                         f"(got {fields[FILES]!r:.200})")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST
                   and not p.name.startswith(temp_prefix(MANIFEST)))  # the local copy while it is written
    if not paths:
        raise FileNotFoundError(f"nothing to publish to {store.uri(prefix)}: {folder} holds no file (expected the "
                                "stage's outputs)")
    files = []
    for path in paths:
        name = path.relative_to(folder).as_posix()
        info = store.put_file(f"{prefix}/{name}", path)
        files.append({"name": name, "size": info.size, "sha256": info.sha256})
    manifest = {**fields, FILES: files}
    text = json.dumps(manifest, indent=2, default=str)
    store.put_bytes(f"{prefix}/{MANIFEST}", text.encode())
    write_text_atomic(folder / MANIFEST, text)
    return manifest


def without_files(manifest: dict) -> dict:
    """The stage's own fields of a manifest (what the stage returned when it published)."""
    return {k: v for k, v in manifest.items() if k != FILES}


def local_problems(folder: str | Path, manifest: dict, sha256: bool) -> list[str]:
    """How the files in ``folder`` differ from the manifest's list (empty: they match, or the manifest
    lists no files). Sizes are always compared; contents only when ``sha256`` is true."""
    folder = Path(folder)
    problems = []
    for entry in listed_files(manifest) or []:
        path = folder / entry.name
        if not path.is_file():
            problems.append(f"{entry.name}: listed in {MANIFEST} ({entry.size} bytes) but not in {folder}")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.name}: {path.stat().st_size} bytes, {MANIFEST} lists {entry.size}")
        elif sha256 and (actual := sha256_file(path)) != entry.sha256:
            problems.append(f"{entry.name}: sha256 {actual}, {MANIFEST} lists {entry.sha256}")
    return problems


def store_problems(store: ObjectStore, prefix: str, manifest: dict) -> list[str]:
    """How the objects under ``prefix`` differ from the manifest's list, from the store's records only (no
    data read): each listed file present with the listed size and the listed sha256 on record."""
    prefix = prefix.rstrip("/")
    problems = []
    for entry in listed_files(manifest) or []:
        try:
            info = store.stat(f"{prefix}/{entry.name}")
        except ObjectNotFoundError:
            problems.append(f"{entry.name}: listed in {MANIFEST} ({entry.size} bytes) but not in the store")
            continue
        if info.size != entry.size:
            problems.append(f"{entry.name}: {info.size} bytes in the store, {MANIFEST} lists {entry.size}")
        elif info.sha256 != entry.sha256:
            problems.append(f"{entry.name}: the store records sha256 {info.sha256}, {MANIFEST} lists {entry.sha256}")
    return problems
