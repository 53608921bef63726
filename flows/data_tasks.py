"""Data-side tasks: dataset digest, the built-in classifier (evaluation features), embed and mine.

Each cached task computes into a local work folder, uploads to the object store under the layout of
DESIGN 2.3 (``weights/``, ``embeddings/<encoder>/<digest>/``, ``groups/<digest>/``) and records the
artefact in the catalogue. A manifest object listing every file (name, size, sha256; see
:mod:`registry.manifest`) is written last, so an artefact already in the store (for instance after the
Prefect cache was cleared) is reused instead of recomputed, and a file deleted or changed behind the
manifest's back is noticed on reuse.
"""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from groupdiff.config import GroupDiffConfig
from registry.manifest import MANIFEST, local_problems, publish_folder, store_problems, without_files

from .common import stage_digest, stage_run, task_options
from .records import Records, RecordsConfig

CLASSIFIER = "classifier"  # the built-in classifier: its weights' folder under weights/ and its catalogue name


# DataConfig fields that change how the data is read or built, never which items it holds
READER_SETTINGS = {"num_workers", "prefetch_factor", "cache_dir", "vae", "ingest"}


def data_digest_inputs(config: GroupDiffConfig) -> dict:
    """The data config fields that fix the images (not reader settings)."""
    return config.data.model_dump(exclude=READER_SETTINGS)


def _warn(message: str, *args) -> None:
    """Log to the Prefect run's logger inside a run, else to this module's logger."""
    import logging

    from prefect.exceptions import MissingContextError

    try:
        get_run_logger().warning(message, *args)
    except MissingContextError:
        logging.getLogger(__name__).warning(message, *args)


def fetch(records: Records, prefix: str, folder: Path) -> Path:
    """The artefact ``prefix`` in ``folder``, checked against its manifest's file list.

    A local copy whose files have the listed sizes is used as is; otherwise everything under ``prefix`` is
    downloaded (each object verified against the store's record) and every listed file is checked for its
    size and sha256. Raises ``FileNotFoundError`` when the store holds no manifest (an incomplete artefact)
    and ``ValueError`` naming each file that differs from the manifest."""
    import json

    folder = Path(folder)
    local = folder / MANIFEST
    if local.is_file():
        problems = local_problems(folder, json.loads(local.read_text()), sha256=False)
        if not problems:
            return folder
        _warn("local copy of %s differs from its manifest (%s): downloading it again",
              records.store.uri(prefix), "; ".join(problems))
        local.unlink()
    records.store.get_dir(prefix, folder)
    if not local.is_file():
        raise FileNotFoundError(f"{records.store.uri(prefix)} has no {MANIFEST}: the artefact was never completed "
                                "or was partly deleted (expected its writer to put the manifest last)")
    problems = local_problems(folder, json.loads(local.read_text()), sha256=True)
    if problems:
        local.unlink()  # so that the next call downloads again
        raise ValueError(f"{records.store.uri(prefix)} does not match its {MANIFEST}: " + "; ".join(problems))
    return folder


def publish(records: Records, prefix: str, folder: Path, manifest: dict) -> str:
    """Upload ``folder`` to ``prefix``, then the manifest (``manifest`` plus each file's name, size and sha256)
    last, so a manifest in the store means a complete artefact; returns the prefix's URI."""
    publish_folder(records.store, prefix, folder, manifest)
    return records.store.uri(prefix)


def already_published(records: Records, prefix: str) -> dict | None:
    """The manifest's own fields (without the file list) if the store holds the finished artefact: its
    manifest is there and every file it lists is present with the listed size and sha256 on record (a
    stat per file, no data read). None when not published or broken (logged; the stage then recomputes)."""
    import json

    key = f"{prefix}/{MANIFEST}"
    if not records.store.exists(key):
        return None
    manifest = json.loads(records.store.get_bytes(key))
    problems = store_problems(records.store, prefix, manifest)
    if problems:
        _warn("%s is broken (%s): computing it again", records.store.uri(prefix), "; ".join(problems))
        return None
    return without_files(manifest)


@task(name="dataset", retries=2, retry_delay_seconds=[2, 4])
def dataset_task(config: GroupDiffConfig, records: RecordsConfig) -> dict:
    """The dataset's content digest (never cached: new data means a new digest) recorded in the catalogue; a
    dataset version of ``groupdiff ingest`` (same content digest) is its own row (name, version, URI)."""
    from sqlalchemy import select

    from groupdiff.data.datasets import build_dataset
    from registry.catalogue.models import Dataset
    from registry.catalogue.records import record_dataset

    dataset = build_dataset(config.data)
    rec = Records(records)
    name = f"{config.data.dataset}-{config.data.split}"
    uri = f"builtin://{name}" if config.data.dataset == "fmnist" else config.data.root
    version = None
    with rec.catalogue.begin() as session:
        row = session.scalar(select(Dataset).where(Dataset.digest == dataset.digest))
        if row is not None and row.version is not None:
            name, uri, version = row.name, row.uri, row.version
        else:
            record_dataset(session, name, dataset.digest, uri, data_digest_inputs(config))
    return {"digest": dataset.digest, "name": name, "uri": uri, "num_items": len(dataset), "version": version}


@task(**task_options("classifier"))
def classifier_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, parent_run_id: str | None) -> dict:
    """Train (or reuse) the built-in classifier: features of ``fd_fmnist`` and of the classifier encoder;
    recorded in the catalogue's ``weights`` table (name 'classifier')."""
    from registry.catalogue.records import record_weights
    from registry.layout import weights_key

    rec = Records(records)
    prefix = weights_key(f"{CLASSIFIER}/{digest}")
    folder = rec.work(CLASSIFIER, digest)
    if (done := already_published(rec, prefix)) is None:
        import torch

        from groupdiff.data.datasets import fmnist_dataset
        from groupdiff.encoders.classifier import train_classifier

        cfg = config.embed.classifier
        with stage_run(rec, parent_run_id, "classifier", cfg.model_dump()) as run_id:
            torch.manual_seed(cfg.seed)
            train = fmnist_dataset("train", config.data.image_size, cfg.train_limit)
            test = fmnist_dataset("test", config.data.image_size, cfg.eval_limit)
            metrics = train_classifier(train, test, cfg, folder / "classifier.safetensors")
            scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            rec.mlflow.log_batch(run_id, metrics=_metrics(scalars))
            done = {"digest": digest, "metrics": scalars, "mlflow_run_id": run_id}
            publish(rec, prefix, folder, done)
    else:
        fetch(rec, prefix, folder)
    uri = rec.store.uri(prefix)
    with rec.catalogue.begin() as session:
        record_weights(session, CLASSIFIER, digest, uri, {"image_size": config.data.image_size,
                                                          **config.embed.classifier.model_dump()})
    return {**done, "uri": uri, "path": str(folder / "classifier.safetensors")}


def _metrics(values: dict[str, float], step: int = 0):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


@task(**task_options("embed"))
def embed_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, dataset: dict,
               parent_run_id: str | None, classifier: dict | None = None) -> dict:
    """Embed the dataset (``groupdiff.grouping.embed.run_embed``) into ``embeddings/<encoder>/<digest>/``."""
    from registry.catalogue.records import record_dataset, record_embedding_set
    from registry.layout import embeddings_prefix

    rec = Records(records)
    encoder = config.embed.encoder
    prefix = embeddings_prefix(encoder, digest)
    folder = rec.work("embeddings", encoder, digest)
    if classifier is not None:
        config = config.model_copy(update={"embed": config.embed.model_copy(update={"weights": classifier["path"]})})
    if (done := already_published(rec, prefix)) is None:
        from groupdiff.grouping.embed import run_embed

        with stage_run(rec, parent_run_id, "embed", config.embed.model_dump(exclude={"classifier"})) as run_id:
            result = run_embed(config, folder)
            if not result["complete"]:
                raise RuntimeError(f"embedding of {folder} is incomplete: shards missing after the run")
            done = {"digest": digest, "artefact_digest": result["manifest"]["digest"], "encoder": encoder,
                    "mlflow_run_id": run_id}
            publish(rec, prefix, folder, done)
    else:
        fetch(rec, prefix, folder)
    uri = rec.store.uri(prefix)
    with rec.catalogue.begin() as session:
        ds = record_dataset(session, dataset["name"], dataset["digest"], dataset["uri"], data_digest_inputs(config))
        record_embedding_set(session, ds, encoder, digest, uri, config.embed.model_dump(exclude={"classifier"}))
    get_run_logger().info("embeddings %s at %s", digest, uri)
    return {**done, "uri": uri, "path": str(folder)}


@task(**task_options("mine"))
def mine_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, embeddings: dict,
              parent_run_id: str | None) -> dict:
    """Mine the group table (``groupdiff.grouping.mine.run_mine``) into ``groups/<digest>/groups.npz``."""
    from sqlalchemy import select

    from registry.catalogue.models import EmbeddingSet
    from registry.catalogue.records import record_group_table
    from registry.layout import groups_prefix

    rec = Records(records)
    prefix = groups_prefix(digest)
    folder = rec.work("groups", digest)
    if (done := already_published(rec, prefix)) is None:
        from groupdiff.grouping.mine import run_mine

        with stage_run(rec, parent_run_id, "mine", config.mine.model_dump()) as run_id:
            table = run_mine(config, folder / "groups.npz", embeddings["path"])
            stats = {k: float(v) for k, v in table.meta["stats"].items() if isinstance(v, (int, float))}
            rec.mlflow.log_batch(run_id, metrics=_metrics({k: v for k, v in stats.items() if v == v}))
            done = {"digest": digest, "table_digest": table.digest, "stats": stats, "mlflow_run_id": run_id}
            publish(rec, prefix, folder, done)
    else:
        fetch(rec, prefix, folder)
    uri = rec.store.uri(prefix)
    with rec.catalogue.begin() as session:
        emb = session.scalar(select(EmbeddingSet).where(EmbeddingSet.digest == embeddings["digest"]))
        record_group_table(session, emb, digest, uri, config.mine.model_dump())
    return {**done, "uri": uri, "path": str(folder / "groups.npz")}


def data_digests(config: GroupDiffConfig, dataset_digest: str, held_out: tuple[int, int] | None = None) -> dict[str, str]:
    """Digests of the classifier, embed and mine stages of ``config`` over the dataset ``dataset_digest``;
    ``held_out``: the (reference, floor) images the data space's classifier leaves out (flows.data_space)."""
    # the built-in classifier trains on Fashion-MNIST whatever the data; the data space's on the dataset itself,
    # less the images it holds out
    own = {"dataset": dataset_digest, "held_out": list(held_out or ())} if config.data.dataset != "fmnist" else {}
    clf = stage_digest("classifier", image_size=config.data.image_size, config=config.embed.classifier.model_dump(),
                       **own)
    embed_cfg = config.embed.model_dump(exclude={"batch_size", "device", "classifier", "weights"})
    embed = stage_digest("embed", dataset=dataset_digest, config=embed_cfg,
                         classifier=clf if config.embed.encoder == "classifier" else None,
                         weights=config.embed.weights if config.embed.encoder in ("clip", "dinov2") else None)
    mine = stage_digest("mine", embeddings=embed, config=config.mine.model_dump(exclude={"use_gpu", "query_batch"}))
    return {"classifier": clf, "embed": embed, "mine": mine}
