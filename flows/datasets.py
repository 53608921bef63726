"""Dataset versions in the pipeline: ``pipeline.dataset`` resolved in the catalogue to config settings, the code
version, and what a registered model version records about both (tags read by ``retrain-nightly``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .params import PipelineParams
from .records import Records, RecordsConfig

DATASET_TAG = "groupdiff.dataset"  # 'name@N' (a version) or the snapshot's name (built-in data, a plain path)
DATASET_DIGEST_TAG = "groupdiff.dataset_digest"
CODE_VERSION_TAG = "groupdiff.code_version"


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
