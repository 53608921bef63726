"""Do the records agree with the bytes? ``groupdiff check``: the catalogue and the MLflow registry against
the object store.

* Every catalogue row (datasets, weights, embedding sets, group tables, checkpoints, evaluations, model versions)
  whose URI lies in the store: the artefact must be there, complete (a folder artefact ends with the
  ``manifest.json`` its writer puts last, an ingested dataset version with its ``dataset.json``, and every
  file that manifest lists is there) and intact (every
  object read back with its recorded size and sha256 and, for a listed file, the manifest's size and
  sha256; with ``verify_data`` off, sizes and records only). A folder whose manifest predates the file
  list is reported as unverifiable (not an error).
* Every MLflow model version: its model files must be there (``MLmodel`` and each file it names: the
  pyfunc's code file (models-from-code), its artefacts, the environment files); the store URIs in its ``groupdiff.*``
  tags count as references too. A catalogue model version unknown to MLflow is missing as well.
* Every object of the store that no row, no tag and no artefact folder accounts for is reported as
  unreferenced (a leftover; not an error).

An artefact folder owns every object under it; a single-object artefact such as
``samples/<run>/<eval>/samples.npz`` owns the objects of its folder (the evaluation's grid, manifest and
scores). ``Report.exit_code`` is 1 when anything is missing or corrupt, else 0.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from groupdiff.config_base import Section
from groupdiff.data.sharded import LABELS
from groupdiff.data.sharded import MANIFEST as VERSION_MANIFEST
from groupdiff.data.sharded import ShardManifest

from .config import ENV_STORE_ROOT, MlflowConfig, ObjectStoreConfig
from .manifest import MANIFEST, FileEntry, listed_files
from .objectstore import ChecksumMismatchError, ObjectInfo, ObjectNotFoundError, ObjectStore, ObjectStoreError

MISSING, CORRUPT, UNREFERENCED, UNVERIFIABLE = "missing", "corrupt", "unreferenced", "unverifiable"
# Model-version tags written by the pipeline that name store URIs (flows/eval_tasks.register_task).
STORE_TAGS = ("groupdiff.checkpoint", "groupdiff.samples")
ENV_MLFLOW = "MLFLOW_TRACKING_URI"


class CheckConfig(Section):
    """What ``groupdiff check`` compares; empty locations come from the environment, else the embedded defaults."""

    store_root: str = Field(
        "", description=f"Object store root (file://... or s3://...); empty = ${ENV_STORE_ROOT}, else the "
        "embedded default of ObjectStoreConfig.")
    catalogue_url: str = Field(
        "", description="Catalogue SQLAlchemy URL; empty = $GROUPDIFF_CATALOGUE_URL, else the CatalogueConfig default.")
    mlflow_uri: str = Field(
        "", description=f"MLflow tracking URI; empty = ${ENV_MLFLOW}, else the MlflowConfig default; 'none' skips MLflow.")
    verify_data: bool = Field(
        True, description="Read every referenced object back and compare its size and sha256 with the store's "
        "record (slow on large stores); false = check presence and recorded sizes only.")

    def resolved(self) -> "CheckConfig":
        """The same settings with empty locations filled from the environment or the defaults."""
        from .catalogue.db import default_url

        return self.model_copy(update={
            "store_root": self.store_root or os.environ.get(ENV_STORE_ROOT) or ObjectStoreConfig().root,
            "catalogue_url": self.catalogue_url or default_url(),
            "mlflow_uri": self.mlflow_uri or os.environ.get(ENV_MLFLOW) or MlflowConfig().tracking_uri,
        })


@dataclass
class Problem:
    """One finding: ``kind`` is missing | corrupt | unreferenced | unverifiable; ``target`` the object URI or
    MLflow model location; ``referenced_by`` the rows, versions and tags that point at it."""

    kind: str
    target: str
    detail: str
    referenced_by: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Result of :func:`check`: the problems and how much was looked at."""

    problems: list[Problem] = field(default_factory=list)
    rows: int = 0  # catalogue rows read
    model_versions: int = 0  # MLflow model versions read
    objects_verified: int = 0  # store objects read back (or stat-ed when verify_data is off)
    outside: list[str] = field(default_factory=list)  # referenced URIs outside the store (e.g. builtin://)

    def of(self, kind: str) -> list[Problem]:
        """The problems of one kind."""
        return [p for p in self.problems if p.kind == kind]

    @property
    def exit_code(self) -> int:
        """1 when an artefact is missing or corrupt, else 0 (unreferenced objects and folders whose old manifest
        lists no files are reported only)."""
        return 1 if self.of(MISSING) or self.of(CORRUPT) else 0


def key_in_store(store: ObjectStore, uri: str) -> str | None:
    """The key of ``uri`` relative to the store root, or None when ``uri`` lies outside the store."""
    root = store.root.rstrip("/")
    if uri.rstrip("/") == root:
        return ""
    if uri.startswith(root + "/"):
        return uri[len(root) + 1:].strip("/")
    return None


class _Checker:
    def __init__(self, store: ObjectStore, verify_data: bool):
        self.store, self.verify_data = store, verify_data
        self.report = Report()
        self.refs: dict[str, list[str]] = defaultdict(list)  # store URI -> who points at it
        self.manifests: dict[str, str] = {}  # store URI -> the manifest its folder ends with (when not MANIFEST)
        self.owned_prefixes: set[str] = set()  # keys under these are accounted for
        self.owned_keys: set[str] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="groupdiff-check-")

    def close(self) -> None:
        self._tmp.cleanup()

    def refer(self, uri: str, who: str, manifest: str = MANIFEST) -> None:
        """Record that ``who`` points at ``uri``, a folder ending with ``manifest`` or a single object."""
        if key_in_store(self.store, uri) is None:
            self.report.outside.append(uri)
        else:
            self.refs[uri].append(who)
            if manifest != MANIFEST:
                self.manifests[uri] = manifest

    def _verify(self, key: str) -> tuple[str | None, ObjectInfo | None]:
        """(None, the store's record) when ``key`` is intact, else (why not, None)."""
        self.report.objects_verified += 1
        try:
            if self.verify_data:
                info = self.store.get_file(key, Path(self._tmp.name) / "object")
            else:
                info = self.store.stat(key)
        except ChecksumMismatchError as exc:
            return str(exc), None
        except ObjectNotFoundError:
            return "vanished while being checked", None
        except ObjectStoreError as exc:  # e.g. no sha256 record: written behind the store's back
            return str(exc), None
        return None, info

    def artefacts(self) -> None:
        """Check every referenced URI once: present, complete, intact."""
        for uri, who in sorted(self.refs.items()):
            key = key_in_store(self.store, uri)
            if key and self.store.exists(key):  # a single object (e.g. samples.npz)
                self.owned_keys.add(key)
                parent = key.rsplit("/", 1)[0] if "/" in key else ""
                if parent:
                    self.owned_prefixes.add(parent)
                bad, _ = self._verify(key)
                if bad:
                    self.report.problems.append(Problem(CORRUPT, uri, bad, who))
                continue
            keys = self.store.list(key)
            if not keys:
                self.report.problems.append(Problem(MISSING, uri, "no object at this URI or under it", who))
                continue
            self.owned_prefixes.add(key)
            self._folder(key, keys, who, self.manifests.get(uri, MANIFEST))

    def _folder(self, key: str, keys: list[str], who: list[str], manifest: str = MANIFEST) -> None:
        """A folder artefact: its ``manifest`` is there (written last) and every file it lists is present with the
        listed size (and sha256 when ``verify_data``); every object under it reads back as recorded."""
        manifest_key = f"{key}/{manifest}"
        entries: list[FileEntry] | None = None
        if manifest_key not in keys:
            self.report.problems.append(Problem(
                MISSING, self.store.uri(manifest_key),
                f"the artefact folder holds {len(keys)} object(s) but not {manifest}, which its writer puts "
                "last: it was never completed or was partly deleted", who))
        else:
            self.report.objects_verified += 1
            try:
                entries = _listed(manifest, json.loads(self.store.get_bytes(manifest_key)), self.store.uri(manifest_key))
            except (ObjectStoreError, ValueError, TypeError) as exc:  # unreadable, not JSON, or malformed
                self.report.problems.append(Problem(CORRUPT, self.store.uri(manifest_key), str(exc), who))
            else:
                if entries is None:
                    self.report.problems.append(Problem(
                        UNVERIFIABLE, self.store.uri(key), f"unverifiable: manifest lists no files (its {manifest} "
                        "predates file lists): a file deleted or changed inside the folder cannot be noticed", who))
        listed = {f"{key}/{e.name}": e for e in entries or []}
        for name, entry in listed.items():
            if name not in keys:
                size = f"{entry.size} bytes, " if entry.size is not None else ""
                self.report.problems.append(Problem(
                    MISSING, self.store.uri(name), f"listed in {manifest} ({size}sha256 "
                    f"{entry.sha256[:12]}...) but not in the store", who))
        for k in keys:
            if k == manifest_key:
                continue
            bad, info = self._verify(k)
            entry = listed.get(k)
            if not bad and entry is not None and info is not None:
                if entry.size is not None and info.size != entry.size:
                    bad = f"{info.size} bytes in the store, {manifest} lists {entry.size} bytes"
                elif self.verify_data and not info.sha256.startswith(entry.sha256):
                    bad = f"read back with sha256 {info.sha256}, {manifest} lists sha256 {entry.sha256}"
            if bad:
                self.report.problems.append(Problem(CORRUPT, self.store.uri(k), bad, who))

    def unreferenced(self) -> None:
        """Every stored object that no reference accounts for."""
        for key in self.store.list(""):
            if key in self.owned_keys or any(key.startswith(p + "/") for p in self.owned_prefixes if p):
                continue
            self.report.problems.append(Problem(
                UNREFERENCED, self.store.uri(key), "no catalogue row, MLflow model version or tag points at it"))


def _listed(manifest: str, data, where: str) -> list[FileEntry] | None:
    """The files the manifest ``manifest`` (its parsed JSON ``data``) lists. A dataset version's ``dataset.json``
    lists its shards and labels by sha256 (a prefix, no sizes); a folder artefact's ``manifest.json`` by name,
    size and full sha256 (None for an old one without a list)."""
    if manifest == VERSION_MANIFEST:
        version = ShardManifest.from_json(data, where)
        return [FileEntry(s["file"], None, s["sha256"]) for s in version.shards] + [
            FileEntry(LABELS, None, version.labels_sha256)]
    return listed_files(data)


def _catalogue_refs(checker: _Checker, session) -> list[tuple[str, int]]:
    """Register every catalogue row's URI; returns the (name, version) of the catalogue's model versions."""
    from sqlalchemy import select

    from .catalogue.models import Checkpoint, Dataset, EmbeddingSet, Evaluation, GroupTable, ModelVersion, Weights

    describe = {
        Dataset: lambda r: f"datasets #{r.id} ({r.name}{f' v{r.version}' if r.version is not None else ''})",
        Weights: lambda r: f"weights #{r.id} ({r.name}, digest {r.digest[:12]})",
        EmbeddingSet: lambda r: f"embedding_sets #{r.id} ({r.encoder}, digest {r.digest[:12]})",
        GroupTable: lambda r: f"group_tables #{r.id} (digest {r.digest[:12]})",
        Checkpoint: lambda r: f"checkpoints #{r.id} (run {r.run_id}, step {r.step})",
        Evaluation: lambda r: f"evaluations #{r.id} ({r.metric}={r.value:.4g}, protocol {r.protocol_id})",
    }
    for cls, text in describe.items():
        for row in session.scalars(select(cls).order_by(cls.id)):
            checker.report.rows += 1
            # an ingested dataset version (numbered) is a shard folder ending with its dataset.json
            ingested = cls is Dataset and row.version is not None
            checker.refer(row.uri, f"catalogue {text(row)}", VERSION_MANIFEST if ingested else MANIFEST)
    versions = []
    for row in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        checker.report.rows += 1
        checker.refer(row.uri, f"catalogue model_versions #{row.id} ({row.name} v{row.version})")
        versions.append((row.name, row.version))
    return versions


def _model_files(mlmodel: dict) -> list[str]:
    """Files an MLmodel document names, relative to the model folder."""
    files = []
    for flavor in (mlmodel.get("flavors") or {}).values():
        if not isinstance(flavor, dict):
            continue
        for name in ("python_model", "data"):
            if isinstance(flavor.get(name), str):
                files.append(flavor[name])
        if isinstance(flavor.get("model_code_path"), str):  # the logger's own path; MLflow keeps its basename
            files.append(flavor["model_code_path"].replace("\\", "/").rsplit("/", 1)[-1])
        for spec in (flavor.get("artifacts") or {}).values():
            if isinstance(spec, dict) and isinstance(spec.get("path"), str):
                files.append(spec["path"])
        for path in (flavor.get("env") or {}).values():
            if isinstance(path, str):
                files.append(path)
    return sorted(set(files))


def _listing(location: str, tracking_uri: str) -> dict[str, int | None]:
    """Every file under an MLflow artefact location with its size (recursive)."""
    import mlflow.artifacts

    out: dict[str, int | None] = {}
    pending = [""]
    while pending:
        sub = pending.pop()
        uri = f"{location.rstrip('/')}/{sub}" if sub else location
        for info in mlflow.artifacts.list_artifacts(artifact_uri=uri, tracking_uri=tracking_uri):
            path = f"{sub}/{info.path.rsplit('/', 1)[-1]}" if sub else info.path.rsplit("/", 1)[-1]
            if info.is_dir:
                pending.append(path)
            else:
                out[path] = info.file_size
    return out


def _check_mlflow(checker: _Checker, tracking_uri: str, catalogue_versions: list[tuple[str, int]]) -> None:
    """Check every registered model version's files; register its store tags as references."""
    import yaml
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    seen: set[tuple[str, int]] = set()
    for model in _all(lambda token: client.search_registered_models(max_results=100, page_token=token)):
        for mv in _all(lambda token: client.search_model_versions(f"name='{model.name}'", page_token=token)):
            checker.report.model_versions += 1
            who = f"mlflow model {mv.name} v{mv.version}"
            seen.add((mv.name, int(mv.version)))
            for tag in STORE_TAGS:
                if mv.tags.get(tag):
                    checker.refer(mv.tags[tag], f"{who} (tag {tag})")
            location = client.get_model_version_download_uri(mv.name, mv.version)
            try:
                files = _listing(location, tracking_uri)
            except (MlflowException, OSError) as exc:
                files, error = {}, f"cannot list the model's files: {exc}"
            else:
                error = None
            if "MLmodel" not in files:
                checker.report.problems.append(Problem(
                    MISSING, f"{location}/MLmodel", error or "the model version's MLmodel file is not in MLflow's "
                    "artefact store (the model cannot be loaded)", [who]))
                continue
            with tempfile.TemporaryDirectory(prefix="groupdiff-check-") as tmp:
                import mlflow.artifacts

                path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/MLmodel", dst_path=tmp,
                                                           tracking_uri=tracking_uri)
                mlmodel = yaml.safe_load(Path(path).read_text()) or {}
            for name in _model_files(mlmodel):
                if name not in files and not any(f.startswith(name.rstrip("/") + "/") for f in files):
                    checker.report.problems.append(Problem(
                        MISSING, f"{location}/{name}", "named by the model's MLmodel but not in MLflow's artefact store",
                        [who]))
                elif files.get(name) == 0:
                    checker.report.problems.append(Problem(
                        CORRUPT, f"{location}/{name}", "named by the model's MLmodel but empty (0 bytes)", [who]))
    for name, version in catalogue_versions:
        if (name, version) not in seen:
            checker.report.problems.append(Problem(
                MISSING, f"models:/{name}/{version}", "the catalogue records this model version but the MLflow "
                f"registry at {tracking_uri} has no such version", [f"catalogue model_versions ({name} v{version})"]))


def _all(page):
    """Every item of a paged MLflow search."""
    token = None
    while True:
        batch = page(token)
        yield from batch
        token = batch.token
        if not token:
            return


def check(store: ObjectStore, catalogue_session=None, mlflow_uri: str | None = None,
          verify_data: bool = True) -> Report:
    """Compare the catalogue (a SQLAlchemy session, or None to skip) and the MLflow registry at
    ``mlflow_uri`` (None to skip) with ``store``; see the module docstring for what is reported."""
    checker = _Checker(store, verify_data)
    try:
        versions = _catalogue_refs(checker, catalogue_session) if catalogue_session is not None else []
        if mlflow_uri:
            _check_mlflow(checker, mlflow_uri, versions)
        checker.artefacts()
        checker.unreferenced()
    finally:
        checker.close()
    return checker.report


def run(config: CheckConfig) -> Report:
    """Open the records of ``config`` (resolved) and :func:`check` them."""
    from .catalogue.db import open_session
    from .stores import open_store

    config = config.resolved()
    store = open_store(config.store_root)
    factory = open_session(config.catalogue_url)
    mlflow_uri = None if config.mlflow_uri.lower() == "none" else config.mlflow_uri
    with factory() as session:
        return check(store, session, mlflow_uri, config.verify_data)


def format_report(report: Report) -> str:
    """Human-readable lines: each problem with what points at it, then a summary."""
    lines = []
    for kind in (MISSING, CORRUPT, UNREFERENCED, UNVERIFIABLE):
        for p in report.of(kind):
            lines.append(f"{kind.upper():<12} {p.target}")
            lines.append(f"{'':<12} {p.detail}")
            for who in p.referenced_by:
                lines.append(f"{'':<12} referenced by {who}")
    lines.append(
        f"checked {report.rows} catalogue rows, {report.model_versions} MLflow model versions, "
        f"{report.objects_verified} objects: {len(report.of(MISSING))} missing, {len(report.of(CORRUPT))} corrupt, "
        f"{len(report.of(UNREFERENCED))} unreferenced"
        + (f", {len(report.of(UNVERIFIABLE))} unverifiable" if report.of(UNVERIFIABLE) else "")
        + (f"; {len(set(report.outside))} referenced URIs lie outside the store (not checked)" if report.outside else "")
    )
    return "\n".join(lines)
