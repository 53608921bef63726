"""Model registry policy: register a logged model, aliases ``champion`` / ``challenger``, promotion only
when the candidate beats the champion under the same evaluation protocol, and dataset lineage.

Tags written on model versions (all strings):

* ``eval.protocol_id``, ``eval.<metric>`` — the candidate's evaluation;
* ``promotion.decision`` (``promoted`` | ``rejected`` | ``incomparable``), ``promotion.rule``,
  ``promotion.candidate_score``, ``promotion.champion_version``, ``promotion.champion_score``,
  ``promotion.protocol_id``, ``promotion.metric``, ``promotion.time`` — the comparison and its inputs;
* on a replaced champion: ``champion.replaced_by`` and ``champion.replaced_time`` (its history; it does
  not become ``challenger``, which is reserved for candidates that lost).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Decision:
    """Outcome of :func:`promote_if_better`."""

    decision: str  # promoted | rejected | incomparable
    candidate_version: str
    champion_version: str | None
    candidate_score: float
    champion_score: float | None
    reason: str


def _missing(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def require_registered_model(client: MlflowClient, name: str) -> None:
    """Raise KeyError naming ``name`` and the known models when ``name`` is not registered."""
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise KeyError(f"registered model {name!r} does not exist; registered models: {known}") from None


def version_by_alias(client: MlflowClient, name: str, alias: str):
    """The model version with ``alias`` or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise


def _better(candidate: float, champion: float, lower_is_better: bool) -> bool:
    return candidate < champion if lower_is_better else candidate > champion


def promote_if_better(client: MlflowClient, name: str, version: str | int, score: float, protocol_id: str,
                      metric: str = "fid", lower_is_better: bool = True) -> Decision:
    """Give ``version`` the ``champion`` alias only if ``score`` beats the champion's under ``protocol_id``.

    No champion yet -> promoted. Champion evaluated under another protocol -> ``incomparable`` (no
    change). Worse or equal -> ``rejected`` and the candidate becomes ``challenger``. The comparison and
    its inputs are written as tags on the candidate.
    """
    require_registered_model(client, name)
    version = str(version)
    client.get_model_version(name, version)
    if not protocol_id:
        raise ValueError("protocol_id must be a non-empty evaluation protocol id")
    score = float(score)
    client.set_model_version_tag(name, version, "eval.protocol_id", protocol_id)
    client.set_model_version_tag(name, version, f"eval.{metric}", repr(score))
    champion = version_by_alias(client, name, CHAMPION)
    champ_score: float | None = None
    if champion is None or champion.version == version:
        decision, reason = "promoted", "no champion yet" if champion is None else "already champion"
    else:
        champ_protocol = champion.tags.get("eval.protocol_id")
        raw = champion.tags.get(f"eval.{metric}")
        champ_score = float(raw) if raw is not None else None
        if champ_protocol != protocol_id or champ_score is None:
            decision = "incomparable"
            reason = (f"champion v{champion.version} was evaluated under protocol {champ_protocol!r} "
                      f"({metric}={raw}), candidate under {protocol_id!r}")
        elif _better(score, champ_score, lower_is_better):
            decision, reason = "promoted", f"{metric} {score} beats champion's {champ_score}"
        else:
            decision, reason = "rejected", f"{metric} {score} does not beat champion's {champ_score}"
    tags = {
        "promotion.decision": decision, "promotion.reason": reason,
        "promotion.rule": f"{metric} {'lower' if lower_is_better else 'higher'} is better, same protocol",
        "promotion.candidate_score": repr(score), "promotion.protocol_id": protocol_id, "promotion.metric": metric,
        "promotion.champion_version": champion.version if champion else "",
        "promotion.champion_score": repr(champ_score) if champ_score is not None else "",
        "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision == "promoted":
        if champion is not None and champion.version != version:
            client.set_model_version_tag(name, champion.version, "champion.replaced_by", version)
            client.set_model_version_tag(name, champion.version, "champion.replaced_time", tags["promotion.time"])
        challenger = version_by_alias(client, name, CHALLENGER)
        if challenger is not None and challenger.version == version:
            client.delete_registered_model_alias(name, CHALLENGER)
        client.set_registered_model_alias(name, CHAMPION, version)
    elif decision == "rejected":
        client.set_registered_model_alias(name, CHALLENGER, version)
    return Decision(decision, version, champion.version if champion else None, score, champ_score, reason)


def log_dataset(client: MlflowClient, run_id: str, features, targets=None, source: str | None = None,
                name: str | None = None, digest: str | None = None, context: str = "training"):
    """Record a numpy dataset as an input of ``run_id`` (``mlflow.data`` + ``log_inputs``); returns it."""
    dataset = mlflow.data.from_numpy(features, source=source, targets=targets, name=name, digest=digest)
    entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
    client.log_inputs(run_id, datasets=[entry])
    return dataset
