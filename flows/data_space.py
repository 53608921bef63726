"""Scoring a pipeline on a dataset other than the built-in one: the ``data`` feature space.

The built-in score (``fd_fmnist``) compares samples with Fashion-MNIST test images in the features of a classifier
trained on Fashion-MNIST: meaningless for any other dataset. A dataset version is scored instead in the features
of the same small CNN recipe (``embed.classifier``) trained on **the version itself**, against a reference of the
version's own images (a seeded draw of up to ``reference_limit``): ``fd_data`` with its bootstrap interval,
``is_data``, ``precision_data``, ``recall_data`` and ``class_agreement``. Limits, said plainly: there is no
held-out split (the classifier and the reference see the same images) and no real-data floor, and the space
changes with every version, so scores of two versions are compared only after re-scoring under one protocol
(the pipeline re-scores the champion, :func:`flows.pipeline.rescore_champion`). Latent versions are not scored
(their reference would need decoded images); FID needs InceptionV3 weights (``groupdiff score``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from groupdiff.config import GroupDiffConfig

from .common import stage_run, task_options
from .data_tasks import _metrics, already_published, fetch, publish
from .records import Records, RecordsConfig

SPACE = "data"
CLASSIFIER = "classifier-data"  # its weights' folder under weights/ and its catalogue name
REFERENCE_SEED = 0


def dataset_images(data: dict, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray, int, str]:
    """A seeded draw of up to ``limit`` images (uint8 NHWC) of the dataset ``data`` (a DataConfig dump), their
    labels, its class count and digest (a version is class-sorted: the first N would be the first classes)."""
    import torch

    from groupdiff.data.config import DataConfig
    from groupdiff.data.datasets import build_dataset, fetch_items

    dataset = build_dataset(DataConfig.model_validate(data))
    if dataset.channels not in (1, 3):
        raise ValueError(f"data.dataset={data['dataset']!r} holds {dataset.channels}-channel items (latents?): the "
                         "data space scores images; train latents with `groupdiff train` instead of the pipeline")
    count = len(dataset) if not limit else min(limit, len(dataset))
    indices = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:count])
    x = fetch_items(dataset, indices)
    images = x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, np.asarray(dataset.labels)[indices], int(dataset.num_classes), dataset.digest


@task(**task_options("classifier"))
def data_classifier_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, parent_run_id: str | None) -> dict:
    """Train (or reuse) the ``data`` space's classifier on the dataset (``embed.classifier`` recipe; its accuracy
    is on its own training images); recorded in the catalogue's ``weights`` table (name 'classifier-data')."""
    from registry.catalogue.records import record_weights
    from registry.layout import weights_key

    rec = Records(records)
    prefix = weights_key(f"{CLASSIFIER}/{digest}")
    folder = rec.work(CLASSIFIER, digest)
    cfg = config.embed.classifier
    if (done := already_published(rec, prefix)) is None:
        import torch

        from groupdiff.data.datasets import TensorImageDataset
        from groupdiff.encoders.classifier import train_classifier

        with stage_run(rec, parent_run_id, CLASSIFIER, cfg.model_dump()) as run_id:
            torch.manual_seed(cfg.seed)
            images, labels, classes, data_digest = dataset_images(config.data.model_dump(), cfg.train_limit, cfg.seed)
            pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            train = TensorImageDataset(pixels, labels, classes, data_digest)
            metrics = train_classifier(train, train, cfg, folder / "classifier.safetensors")
            scalars = {("train_accuracy" if k == "eval_accuracy" else k): float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float))}
            rec.mlflow.log_batch(run_id, metrics=_metrics(scalars))
            done = {"digest": digest, "metrics": scalars, "mlflow_run_id": run_id, "space": SPACE}
            publish(rec, prefix, folder, done)
    else:
        fetch(rec, prefix, folder)
    uri = rec.store.uri(prefix)
    with rec.catalogue.begin() as session:
        record_weights(session, CLASSIFIER, digest, uri, {"data": config.data.model_dump(), **cfg.model_dump()})
    return {**done, "uri": uri, "path": str(folder / "classifier.safetensors"), "data": config.data.model_dump()}


def data_space(weights: str, device: str = "cpu"):
    """The ``data`` feature space of a classifier file."""
    from groupdiff.data.digest import file_digest
    from groupdiff.encoders.classifier import load_classifier
    from groupdiff.metrics.builtin import classifier_space_from_callables

    model, _ = load_classifier(weights, device)
    return classifier_space_from_callables(model.features, model.logits, int(model.arch["image_size"]),
                                           file_digest(weights), name=SPACE, device=device)


def score_in_data_space(samples_path: str, classifier: dict, reference_limit: int, fd_bootstrap: int,
                        fd_interval: float, cache_dir: Path) -> dict:
    """``fd_data`` and company of the samples against the dataset's own images (see the module docstring)."""
    from groupdiff.metrics.evaluate import compute_metrics
    from groupdiff.metrics.npz import read_samples_npz
    from groupdiff.metrics.reference import reference_from_images

    space = data_space(classifier["path"])
    images, _, _, data_digest = dataset_images(classifier["data"], reference_limit, REFERENCE_SEED)
    reference = reference_from_images(images, space, cache_dir, key=f"{data_digest}-{reference_limit}-{REFERENCE_SEED}")
    batch = read_samples_npz(samples_path)
    metrics = compute_metrics(space(batch.images), reference, SPACE, labels=batch.labels, bootstrap=fd_bootstrap,
                              interval=fd_interval)
    return {k: float(v) for k, v in metrics.items() if v == v}


@task(**task_options("score"))
def data_score_task(records: RecordsConfig, digest: str, samples: dict, classifier: dict, reference_limit: int,
                    parent_run_id: str | None, fd_bootstrap: int, fd_interval: float) -> dict:
    """Score the samples in the ``data`` space (the score task's signature and result, without a floor)."""
    from groupdiff.atomic import write_text_atomic

    from .eval_tasks import WEIGHTS_TAG, publish_manifest

    rec = Records(records)
    prefix = f"{samples['key'].rsplit('/', 1)[0]}/scores/{digest}"
    folder = rec.work("scores", digest)
    if (done := already_published(rec, prefix)) is None:
        params = {"space": SPACE, "reference_limit": reference_limit, "fd_bootstrap": fd_bootstrap,
                  "fd_interval": fd_interval, "weights": samples.get("weights")}
        with stage_run(rec, parent_run_id, f"score-{samples['variant']}", params) as run_id:
            rec.mlflow.set_tag(run_id, WEIGHTS_TAG, str(samples.get("weights")))
            metrics = score_in_data_space(samples["path"], classifier, reference_limit, fd_bootstrap, fd_interval,
                                          rec.work("reference-cache"))
            rec.mlflow.log_batch(run_id, metrics=_metrics(metrics))
            clf = {"train_accuracy": classifier.get("metrics", {}).get("train_accuracy"), "space": SPACE}
            done = {"digest": digest, "metrics": metrics, "floor": {}, "floor_info": None, "classifier": clf,
                    "mlflow_run_id": run_id, "variant": samples["variant"], "weights": samples.get("weights")}
            write_text_atomic(folder / "metrics.json", json.dumps({**done, "samples": samples["uri"]}, indent=1))
            rec.store.put_file(f"{prefix}/metrics.json", folder / "metrics.json")
            publish_manifest(rec, prefix, folder, done)
    elif not (folder / "metrics.json").is_file():
        rec.store.get_file(f"{prefix}/metrics.json", folder / "metrics.json")
    get_run_logger().info("%s: %s (data space: the dataset's own classifier and images)", samples["variant"],
                          done["metrics"])
    return {**done, "uri": rec.store.uri(f"{prefix}/metrics.json"), "path": str(folder / "metrics.json")}
