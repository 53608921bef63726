"""Scoring a pipeline on a dataset other than the built-in one: the ``data`` feature space.

The built-in score (``fd_fmnist``) compares samples with Fashion-MNIST test images in the features of a classifier
trained on Fashion-MNIST: meaningless for any other dataset. A dataset version is scored instead in the features
of the same small CNN recipe (``embed.classifier``) trained on the version itself, against images of the version:
``fd_data`` with its bootstrap interval, ``is_data``, ``precision_data``, ``recall_data`` and ``class_agreement``.

The version is split once (:func:`flows.datasets.held_out_split`, a seeded permutation): up to ``reference_limit``
reference images (fewer when the version is small: at most half of it is held out), then as many images as samples
for the real-data floor (scored against the reference exactly like the samples), and the rest for the classifier,
which never sees the first two. Its accuracy on them is the class agreement of
real images. What stays a limit: the diffusion model trains on the whole version, held-out images included, and
the space changes with every version, so scores of two versions are compared only after re-scoring under one
protocol (the pipeline re-scores the champion, :func:`flows.pipeline.rescore_champion`). Latent versions are not
scored (their reference would need decoded images); FID needs InceptionV3 weights (``groupdiff score``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from groupdiff.config import GroupDiffConfig

from .common import stage_run, task_options
from .data_tasks import _metrics, already_published, fetch, publish
from .datasets import REFERENCE_SEED, held_out_split
from .records import Records, RecordsConfig

SPACE = "data"
CLASSIFIER = "classifier-data"  # its weights' folder under weights/ and its catalogue name


def open_images(data: dict):
    """The dataset ``data`` (a DataConfig dump) for scoring: images with 1 or 3 channels (not latents)."""
    from groupdiff.data.config import DataConfig
    from groupdiff.data.datasets import build_dataset

    dataset = build_dataset(DataConfig.model_validate(data))
    if dataset.channels not in (1, 3):
        raise ValueError(f"data.dataset={data['dataset']!r} holds {dataset.channels}-channel items (latents?): the "
                         "data space scores images; train latents with `groupdiff train` instead of the pipeline")
    return dataset


def images_at(dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items at ``indices`` as uint8 NHWC images, and their labels."""
    import torch

    from groupdiff.data.datasets import fetch_items

    x = fetch_items(dataset, indices)
    images = x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, np.asarray(dataset.labels)[indices]


@task(**task_options("classifier"))
def data_classifier_task(config: GroupDiffConfig, records: RecordsConfig, digest: str, parent_run_id: str | None,
                         reference: int, floor: int) -> dict:
    """Train (or reuse) the ``data`` space's classifier (``embed.classifier`` recipe) on the dataset less its
    held-out reference (up to ``reference``) and ``floor`` images (:func:`held_out_split`), at most ``train_limit``
    of them; its test accuracy is on the held-out images. Recorded in the catalogue's ``weights`` table (name
    'classifier-data')."""
    from registry.catalogue.records import record_weights
    from registry.layout import weights_key

    rec = Records(records)
    prefix = weights_key(f"{CLASSIFIER}/{digest}")
    folder = rec.work(CLASSIFIER, digest)
    cfg = config.embed.classifier
    split = {"reference": reference, "floor": floor, "seed": REFERENCE_SEED}
    if (done := already_published(rec, prefix)) is None:
        import torch

        from groupdiff.data.datasets import TensorImageDataset
        from groupdiff.encoders.classifier import train_classifier

        with stage_run(rec, parent_run_id, CLASSIFIER, {**cfg.model_dump(), **split}) as run_id:
            torch.manual_seed(cfg.seed)
            dataset = open_images(config.data.model_dump())
            ref, flo, own = held_out_split(len(dataset), reference, floor)
            if cfg.train_limit and len(own) > cfg.train_limit:
                own = np.sort(np.random.default_rng(cfg.seed).permutation(own)[:cfg.train_limit])

            def tensors(indices: np.ndarray) -> TensorImageDataset:
                images, labels = images_at(dataset, indices)
                pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
                return TensorImageDataset(pixels, labels, int(dataset.num_classes), dataset.digest)

            metrics = train_classifier(tensors(own), tensors(np.sort(np.concatenate([ref, flo]))), cfg,
                                       folder / "classifier.safetensors")
            scalars = {("test_accuracy" if k == "eval_accuracy" else k): float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float))}
            rec.mlflow.log_batch(run_id, metrics=_metrics(scalars))
            done = {"digest": digest, "metrics": scalars, "mlflow_run_id": run_id, "space": SPACE, "split": split}
            publish(rec, prefix, folder, done)
    else:
        fetch(rec, prefix, folder)
    uri = rec.store.uri(prefix)
    with rec.catalogue.begin() as session:
        record_weights(session, CLASSIFIER, digest, uri,
                       {"data": config.data.model_dump(), **cfg.model_dump(), "split": split})
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
                        fd_interval: float, cache_dir: Path) -> tuple[dict, dict, dict]:
    """``fd_data`` and company of the samples against the version's reference images, the real-data floor (as many
    held-out images as samples, scored the same way) and where the floor's images came from."""
    from groupdiff.metrics.evaluate import compute_metrics
    from groupdiff.metrics.npz import read_samples_npz
    from groupdiff.metrics.reference import reference_from_images

    batch = read_samples_npz(samples_path)
    split = classifier["split"]
    if (split["reference"], split["floor"]) != (reference_limit, len(batch.images)):
        raise ValueError(f"the data-space classifier was trained without the {split['reference']} + {split['floor']} "
                         f"held-out images, but these are {reference_limit} reference images + {len(batch.images)} "
                         "samples: train it with this run's reference_limit and num_samples")
    space = data_space(classifier["path"])
    dataset = open_images(classifier["data"])
    ref, flo, _ = held_out_split(len(dataset), reference_limit, len(batch.images), split["seed"])
    images, _ = images_at(dataset, ref)
    reference = reference_from_images(images, space, cache_dir, key=f"{dataset.digest}-{len(ref)}-{split['seed']}-held")

    def scored(features, labels) -> dict:
        metrics = compute_metrics(features, reference, SPACE, labels=labels, bootstrap=fd_bootstrap,
                                  interval=fd_interval)
        return {k: float(v) for k, v in metrics.items() if v == v}

    real, real_labels = images_at(dataset, flo)
    info = {"space": SPACE, "num_images": int(len(flo)), "reference_images": int(len(ref)),
            "dataset_images": int(len(dataset))}
    return scored(space(batch.images), batch.labels), scored(space(real), real_labels), info


@task(**task_options("score"))
def data_score_task(records: RecordsConfig, digest: str, samples: dict, classifier: dict, reference_limit: int,
                    parent_run_id: str | None, fd_bootstrap: int, fd_interval: float) -> dict:
    """Score the samples in the ``data`` space (the score task's signature and result, with the data space's floor)."""
    from groupdiff.atomic import write_text_atomic

    from .eval_tasks import WEIGHTS_TAG, floor_metrics, publish_manifest

    rec = Records(records)
    prefix = f"{samples['key'].rsplit('/', 1)[0]}/scores/{digest}"
    folder = rec.work("scores", digest)
    if (done := already_published(rec, prefix)) is None:
        params = {"space": SPACE, "reference_limit": reference_limit, "fd_bootstrap": fd_bootstrap,
                  "fd_interval": fd_interval, "weights": samples.get("weights")}
        with stage_run(rec, parent_run_id, f"score-{samples['variant']}", params) as run_id:
            rec.mlflow.set_tag(run_id, WEIGHTS_TAG, str(samples.get("weights")))
            metrics, floor, info = score_in_data_space(samples["path"], classifier, reference_limit, fd_bootstrap,
                                                       fd_interval, rec.work("reference-cache"))
            rec.mlflow.log_batch(run_id, metrics=_metrics({**metrics, **floor_metrics(floor)}))
            clf = {k: classifier.get("metrics", {}).get(k) for k in ("test_accuracy", "eval_images")} | {"space": SPACE}
            done = {"digest": digest, "metrics": metrics, "floor": floor, "floor_info": info, "classifier": clf,
                    "mlflow_run_id": run_id, "variant": samples["variant"], "weights": samples.get("weights")}
            write_text_atomic(folder / "metrics.json", json.dumps({**done, "samples": samples["uri"]}, indent=1))
            rec.store.put_file(f"{prefix}/metrics.json", folder / "metrics.json")
            publish_manifest(rec, prefix, folder, done)
    elif not (folder / "metrics.json").is_file():
        rec.store.get_file(f"{prefix}/metrics.json", folder / "metrics.json")
    get_run_logger().info("%s: %s; real-data floor: %s (data space: the dataset's own classifier and held-out "
                          "images)", samples["variant"], done["metrics"], done.get("floor"))
    return {**done, "uri": rec.store.uri(f"{prefix}/metrics.json"), "path": str(folder / "metrics.json")}
