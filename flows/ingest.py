"""The ``ingest`` flow (deployment ``ingest``, command ``groupdiff ingest``): an image folder or a tar of class
folders on the machine the flow runs on -> a dataset version in the object store and the catalogue.

Every file is validated (a corrupt or non-image file is reported by its path; ``on_corrupt`` skip or fail),
centre-cropped and stored as pixels, or encoded to SD-VAE latents (weights from a local path or ``s3://``,
fetched to a temporary folder first) by :func:`groupdiff.data.ingest.ingest_images` into a temporary folder;
:func:`registry.datasets.publish_version` uploads it to ``datasets/<name>/<digest>/`` (``dataset.json`` last) and
:func:`registry.datasets.record_dataset_version` numbers it (``name@N``, parent = the previous version).
Identical content is the existing version (nothing uploaded, no new number). A failure publishes nothing and
the temporary folder is removed in every case.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from groupdiff.data.config import VaeConfig

from .params import IngestParams
from .records import Records, RecordsConfig

RECORD_TRIES = 3  # two ingests of one name at once: the loser of a version number tries the next one


def fetch_weights(uri: str, folder: Path) -> str:
    """A local path of the weights ``uri``: a local path as it is; an ``s3://`` object (one file) or prefix (a
    diffusers folder) downloaded under ``folder``."""
    if not uri.startswith("s3://"):
        if not Path(uri).exists():
            raise FileNotFoundError(f"vae={uri!r} does not exist; expected a diffusers folder, a weights file or an "
                                    "s3:// URI of one")
        return uri
    from registry.objectstore import ObjectNotFoundError
    from registry.stores import open_store
    from registry.uri import parse_uri

    parsed = parse_uri(uri)
    store = open_store(f"s3://{parsed.bucket}")
    target = folder / "vae" / Path(parsed.prefix).name
    try:
        store.get_file(parsed.prefix, target)
    except ObjectNotFoundError:
        if not store.get_dir(parsed.prefix, target):
            raise FileNotFoundError(f"vae={uri!r}: no object or folder there") from None
    return str(target)


def publish_and_record(rec: Records, params: IngestParams, report: dict) -> dict[str, Any]:
    """Publish the version folder of ``report`` and number it; identical content is the existing version."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from registry.catalogue.models import Dataset
    from registry.datasets import describe, publish_version, record_dataset_version

    with rec.catalogue() as session:
        existing = session.scalar(select(Dataset).where(Dataset.digest == report["digest"], Dataset.version.is_not(None)))
        if existing is not None:
            return {**describe(existing), "created": False}
    uri = publish_version(rec.store, report["out"], params.name)
    source = {"path": params.src, "host": socket.gethostname(), "files": len(report["corrupt"]) + report["num_items"],
              "corrupt": report["corrupt"], "ingest": params.ingest_config().model_dump(), "vae": params.vae or None}
    for attempt in range(RECORD_TRIES):
        try:
            with rec.catalogue.begin() as session:
                row, created = record_dataset_version(session, params.name, report, uri, source)
                return {**describe(row), "created": created}
        except IntegrityError:  # another ingest of this name took the number first
            if attempt == RECORD_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def report_text(result: dict[str, Any]) -> str:
    """Markdown: the version, whether it is new, counts per class and the corrupt files by path."""
    state = "new version" if result["created"] else "identical to the existing version: no new version"
    lines = [f"# {result['spec']} ({state})", "", f"{result['kind']}, digest `{result['digest']}`, at {result['uri']}",
             "", "| class | images |", "|---|---|", *[f"| {k} | {v} |" for k, v in result["counts"].items()], ""]
    corrupt = result["corrupt"]
    lines.append(f"{len(corrupt)} corrupt or non-image files left out" + (":" if corrupt else "."))
    lines += [f"- {path}" for path in corrupt]
    return "\n".join(lines)


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParams, records: RecordsConfig | None = None) -> dict[str, Any]:
    """Ingest ``params.src`` as the next version of ``params.name``; returns name, version, uri, digest, created,
    counts and the corrupt files (relative paths)."""
    records = (records or RecordsConfig.from_env()).resolved()
    rec = Records(records)
    log = get_run_logger()
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=rec.work("ingest")))
    try:
        vae = None
        if params.encode == "latents":
            vae = VaeConfig(weights=fetch_weights(params.vae, work))
        from groupdiff.data.ingest import ingest_images

        report = ingest_images(params.src, work / "version", params.ingest_config(), vae)
        for path in report["corrupt"]:
            log.warning("corrupt or non-image file left out: %s", path)
        result = {**publish_and_record(rec, params, report), "corrupt": list(report["corrupt"])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report_text(result)
    create_markdown_artifact(text, key="ingest", description=f"dataset version {result['spec']}")
    log.info("%s", text)
    return result
