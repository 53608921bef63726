"""Dataset versions in the pipeline: ``pipeline.dataset`` resolved in the catalogue to config settings, the code
version, and what a registered model version records about both (tags read by ``retrain-nightly``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .params import PipelineParams
from .records import Records, RecordsConfig

DATASET_TAG = "groupdiff.dataset"  # 'name@N' (a version) or the snapshot's name (built-in data, a plain path)
DATASET_DIGEST_TAG = "groupdiff.dataset_digest"
CODE_VERSION_TAG = "groupdiff.code_version"
REFERENCE_SEED = 0  # the seed of a version's held-out split (flows.data_space)


def version_settings(info: dict[str, Any]) -> dict[str, Any]:
    """Config settings that train on the version ``info`` (:func:`registry.datasets.describe`): its data (whole:
    ``data.limit`` 0, so the trained set is the version and its digest the version's) and the model's shape."""
    from registry.datasets import readable_root

    if info["kind"] != "pixels":
        raise ValueError(f"dataset {info['spec']!r} holds {info['kind']}: the pipeline scores samples against the "
                         "dataset's own images, which a latents version does not have; train it with `groupdiff train "
                         f"--set data.dataset=latents --set data.root={info['uri']}` (and sample/score with FID weights)")
    channels, size = info["item_shape"][0], info["item_shape"][-1]
    return {"data.dataset": "imagefolder", "data.root": readable_root(info["uri"]), "data.image_size": size,
            "data.limit": 0, "model.in_channels": channels, "model.input_size": size,
            "model.num_classes": len(info["classes"])}


def held_out_split(num_items: int, reference_limit: int, floor: int, seed: int = REFERENCE_SEED
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (each sorted) of the reference images, the ``floor`` images after them and the rest (the data
    space's classifier's), from one seeded permutation of a version's ``num_items`` items. The held-out part takes
    at most half the version: up to ``reference_limit`` reference images, fewer when the version is small; a floor
    that leaves no room for a reference is a ValueError naming the numbers."""
    reference = min(reference_limit, num_items // 2 - floor)
    if floor < 1 or reference < 1:
        raise ValueError(
            f"the data space holds out num_samples={floor} images for the real-data floor plus reference images, at "
            f"most half of a version of {num_items} images ({num_items // 2}; the rest trains its classifier): "
            f"expected num_samples <= {num_items // 2 - 1}; lower num_samples or ingest more images")
    order = np.random.default_rng(seed).permutation(num_items)
    return (np.sort(order[:reference]), np.sort(order[reference:reference + floor]),
            np.sort(order[reference + floor:]))


def find_version(records: RecordsConfig, spec: str) -> dict[str, Any]:
    """The catalogue's version ``spec`` ('name', 'name@latest', 'name@N') as :func:`registry.datasets.describe`."""
    from registry.datasets import describe, resolve_dataset

    with Records(records).catalogue() as session:
        return describe(resolve_dataset(session, spec))


def resolve_params(params: PipelineParams, records: RecordsConfig) -> PipelineParams:
    """``params`` with ``dataset`` pinned to the version it names ('name@N') and its settings (no dataset: as is)."""
    if not params.dataset:
        return params
    info = find_version(records, params.dataset)
    # the data space's held-out split must fit the version: said before any work
    held_out_split(sum(info["counts"].values()), params.reference_limit, params.num_samples)
    return params.with_dataset(info["spec"], version_settings(info))


def code_version() -> str:
    """Digest of the ML library's source and presets (``groupdiff/**/*.py``, ``*.yaml``): what a retraining would
    run. The same checkout or image gives the same value, whatever the git state."""
    import groupdiff
    from groupdiff.data.digest import digest_json, file_digest

    root = Path(groupdiff.__file__).resolve().parent
    files = sorted(p for pattern in ("*.py", "*.yaml") for p in root.rglob(pattern) if "__pycache__" not in p.parts)
    return "src-" + digest_json([[p.relative_to(root).as_posix(), file_digest(p)] for p in files])[:16]


def version_tags(dataset: dict[str, Any]) -> dict[str, str]:
    """What a registered model version records about its data and code (``dataset``: the dataset task's result)."""
    label = f"{dataset['name']}@{dataset['version']}" if dataset.get("version") is not None else dataset["name"]
    return {DATASET_TAG: label, DATASET_DIGEST_TAG: dataset["digest"], CODE_VERSION_TAG: code_version()}


def tag_model_version(rec: Records, model_name: str, version: str, dataset: dict[str, Any]) -> None:
    """Set :func:`version_tags` on a registered model version. Tags already holding their value are left alone,
    and a write that loses to another flow run writing the same value at the same moment (identical runs whose
    registration came from the cache: MLflow's tag insert then fails with a unique violation) is accepted."""
    from mlflow.exceptions import MlflowException

    current = rec.mlflow.get_model_version(model_name, version).tags
    for key, value in version_tags(dataset).items():
        if current.get(key) == value:
            continue
        try:
            rec.mlflow.set_model_version_tag(model_name, version, key, value)
        except MlflowException:
            if rec.mlflow.get_model_version(model_name, version).tags.get(key) != value:
                raise


def log_training_input(rec: Records, run_id: str, dataset: dict[str, Any]) -> None:
    """A dataset version as the MLflow dataset input of a training run (nothing for unversioned data)."""
    from registry.datasets import log_version_input

    if dataset.get("version") is not None:
        log_version_input(rec.mlflow, run_id, dataset["name"], dataset["version"], dataset["digest"], dataset["uri"])
