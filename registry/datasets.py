"""Dataset versions, the platform half of ``groupdiff ingest``: publish a version folder to the object store and
number it in the catalogue.

A version folder (:mod:`groupdiff.data.sharded`: ``items-NNNNN.npy``, ``labels.npy``, ``dataset.json``) goes to
``datasets/<name>/<digest>/`` (:func:`registry.layout.dataset_prefix`): the shards and the labels first, each
checked against the sha256 its manifest lists, and ``dataset.json`` last, so a reader that finds the manifest
finds a complete version. In the catalogue a version is a ``datasets`` row with ``version`` = the name's latest
+ 1 and ``parent`` = that latest; identical content (same digest) is the existing row, never a new version.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from groupdiff.data.sharded import LABELS, MANIFEST, ShardManifest

from .catalogue.models import Dataset
from .layout import dataset_prefix
from .objectstore import ObjectNotFoundError, ObjectStore
from .uri import parse_uri

LATEST = "latest"
_SPEC_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(@(?P<version>latest|[1-9][0-9]*))?$")
SPEC_FORMS = "'NAME', 'NAME@latest' or 'NAME@N' (N = 1, 2, ...)"


class DatasetNotFound(LookupError, ValueError):
    """A dataset name or version that the catalogue does not hold (a bad value given by the user)."""


def read_manifest(folder: str | Path) -> ShardManifest:
    """The manifest of a complete version folder (its recorded digest checked against its content)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: not a complete dataset version (written by "
                                "groupdiff.data.ingest.ingest_images)")
    return ShardManifest.from_json(json.loads(path.read_text()), str(path))


def _files(manifest: ShardManifest) -> dict[str, str]:
    """File name -> the sha256 (prefix) the manifest lists, shards then labels."""
    return {**{s["file"]: s["sha256"] for s in manifest.shards}, LABELS: manifest.labels_sha256}


def _present(store: ObjectStore, key: str, sha256: str) -> bool:
    try:
        return store.stat(key).sha256.startswith(sha256)
    except ObjectNotFoundError:
        return False


def publish_version(store: ObjectStore, local_dir: str | Path, name: str) -> str:
    """Upload the version folder ``local_dir`` to ``datasets/<name>/<digest>/`` of ``store``; returns its URI.

    Shards and labels first (a file already there with the listed sha256 is not sent again), ``dataset.json``
    last: the commit marker. Re-publishing identical content is a no-op. A failure deletes what this call
    uploaded, so nothing partial is left behind."""
    folder = Path(local_dir)
    manifest = read_manifest(folder)
    prefix = dataset_prefix(name, manifest.digest)
    files = _files(manifest)
    if store.exists(f"{prefix}/{MANIFEST}") and all(_present(store, f"{prefix}/{f}", s) for f, s in files.items()):
        return store.uri(prefix)
    uploaded: list[str] = []
    try:
        for file, sha256 in files.items():
            key = f"{prefix}/{file}"
            if _present(store, key, sha256):
                continue
            info = store.put_file(key, folder / file)
            uploaded.append(key)
            if not info.sha256.startswith(sha256):
                raise ValueError(f"{folder / file}: sha256 {info.sha256} does not match {sha256} listed in its "
                                 f"{MANIFEST}; the folder was changed after it was written")
        store.put_file(f"{prefix}/{MANIFEST}", folder / MANIFEST)
    except BaseException:
        for key in uploaded:
            try:
                store.delete(key)
            except Exception:  # best effort: without the manifest the objects are never read as a version
                pass
        raise
    return store.uri(prefix)


def readable_root(uri: str) -> str:
    """What ``data.root`` takes for a version at ``uri``: the ``s3://`` URI itself (read through the store
    factory), or the local folder of a ``file://`` store."""
    parsed = parse_uri(uri)
    return uri if parsed.scheme == "s3" else str(parsed.path)


def latest_version(session: Session, name: str) -> Dataset | None:
    """The newest version of ``name`` (None when it has none)."""
    return session.scalar(select(Dataset).where(Dataset.name == name, Dataset.version.is_not(None))
                          .order_by(Dataset.version.desc()).limit(1))


def record_dataset_version(session: Session, name: str, report: dict[str, Any], uri: str,
                           source: dict[str, Any] | None = None) -> tuple[Dataset, bool]:
    """Number the ingested content ``report`` (:class:`groupdiff.data.ingest.IngestReport`) as the next version
    of ``name`` (parent = the latest); returns ``(row, created)``. Content already recorded (same digest) is
    that row and ``created`` is False: re-ingesting identical content makes no new version."""
    digest = report["digest"]
    existing = session.scalar(select(Dataset).where(Dataset.digest == digest))
    if existing is not None and existing.version is not None:
        return existing, False
    latest = latest_version(session, name)
    fields = dict(name=name, uri=uri, version=(latest.version + 1) if latest else 1, parent=latest,
                  source=source or {}, counts=dict(report["counts"]), kind=report["kind"],
                  config={"item_shape": list(report["item_shape"]), "classes": list(report["classes"]),
                          "num_items": int(report["num_items"]), "corrupt": list(report.get("corrupt", []))})
    if existing is not None:  # recorded before as an unversioned snapshot (e.g. a pipeline run on its folder)
        for key, value in fields.items():
            setattr(existing, key, value)
        row = existing
    else:
        row = Dataset(digest=digest, **fields)
        session.add(row)
    session.flush()
    return row, True


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``'NAME'`` / ``'NAME@latest'`` -> (NAME, None); ``'NAME@N'`` -> (NAME, N)."""
    found = _SPEC_RE.match(spec or "")
    if found is None:
        raise ValueError(f"dataset {spec!r}: expected {SPEC_FORMS}")
    version = found.group("version")
    return found.group("name"), (None if version in (None, LATEST) else int(version))


def resolve_dataset(session: Session, spec: str) -> Dataset:
    """The catalogue row of the dataset version ``spec`` (see :data:`SPEC_FORMS`); a name or version that does
    not exist is a :class:`DatasetNotFound` naming the spec and what exists."""
    name, version = parse_spec(spec)
    versions = list(session.scalars(select(Dataset.version).where(Dataset.name == name, Dataset.version.is_not(None))
                                    .order_by(Dataset.version)))
    if not versions:
        known = sorted(set(session.scalars(select(Dataset.name).where(Dataset.version.is_not(None)))))
        raise DatasetNotFound(f"dataset {spec!r}: no versions of {name!r} in the catalogue (datasets with versions: "
                          f"{known}); ingest it with `groupdiff ingest SRC --name {name}`")
    wanted = versions[-1] if version is None else version
    if wanted not in versions:
        raise DatasetNotFound(f"dataset {spec!r}: {name!r} has no version {wanted}; its versions are {versions}")
    return session.scalar(select(Dataset).where(Dataset.name == name, Dataset.version == wanted))


def describe(row: Dataset) -> dict[str, Any]:
    """A version row as JSON: name, version, spec ('name@N'), uri, digest, kind, counts, parent version."""
    return {"name": row.name, "version": row.version, "spec": f"{row.name}@{row.version}", "uri": row.uri,
            "digest": row.digest, "kind": row.kind, "counts": dict(row.counts or {}),
            "item_shape": list((row.config or {}).get("item_shape", [])),
            "classes": list((row.config or {}).get("classes", [])),
            "parent_version": row.parent.version if row.parent is not None else None}


def log_version_input(client, run_id: str, name: str, version: int | None, digest: str, uri: str,
                      context: str = "training") -> None:
    """The dataset version as an MLflow dataset input of ``run_id`` (``mlflow.data`` MetaDataset: name
    'NAME@N', the content digest, the source URI; no data is read)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    label = f"{name}@{version}" if version is not None else name
    dataset = MetaDataset(resolve_dataset_source(uri), name=label, digest=digest)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                     tags=[InputTag("mlflow.data.context", context)])])
