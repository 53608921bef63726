"""Model registry policy: register a logged model, aliases ``champion`` / ``challenger``, promotion only
when the candidate beats the champion under the same evaluation protocol, and dataset lineage.

Tags written on model versions (all strings):

* ``eval.protocol_id``, ``eval.<metric>`` and, when given, ``eval.<metric>_ci_low`` /
  ``eval.<metric>_ci_high`` (its bootstrap interval) — the candidate's evaluation;
* ``promotion.decision`` (``promoted`` | ``rejected`` | ``incomparable``), ``promotion.rule``,
  ``promotion.reason``, ``promotion.candidate_score``, ``promotion.candidate_interval``,
  ``promotion.champion_version``, ``promotion.champion_score``, ``promotion.champion_interval``,
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
    champion_interval: tuple[float, float] | None = None


def _interval_tags(metric: str) -> tuple[str, str]:
    return f"eval.{metric}_ci_low", f"eval.{metric}_ci_high"


def recorded_interval(tags: dict[str, str], metric: str) -> tuple[float, float] | None:
    """The bootstrap interval a version was registered with (its ``eval.<metric>_ci_low/high`` tags), or None."""
    low, high = (tags.get(k) for k in _interval_tags(metric))
    return (float(low), float(high)) if low is not None and high is not None else None


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


def beats(candidate: float, champion: float, champion_interval: tuple[float, float] | None,
          lower_is_better: bool) -> bool:
    """The gate: with the champion's interval, ``candidate`` must lie beyond it (below its low end when lower
    is better, above its high end otherwise); without one, plainly better than the champion's score."""
    if champion_interval is None:
        return _better(candidate, champion, lower_is_better)
    low, high = champion_interval
    return candidate < low if lower_is_better else candidate > high


def promote_if_better(client: MlflowClient, name: str, version: str | int, score: float, protocol_id: str,
                      metric: str = "fid", lower_is_better: bool = True,
                      interval: tuple[float, float] | None = None) -> Decision:
    """Give ``version`` the ``champion`` alias only if ``score`` beats the champion's under ``protocol_id``.

    ``interval`` is the candidate's bootstrap interval of ``score``; it is recorded on the version, so
    when this version is champion a challenger must beat it *beyond* that interval (:func:`beats`): a
    score inside the champion's interval is noise of the finite sample set and is rejected. A champion
    registered without an interval is compared by its score alone. No champion yet -> promoted.
    Champion evaluated under another protocol -> ``incomparable`` (no change). Not better -> ``rejected``
    and the candidate becomes ``challenger``. The comparison and its inputs are written as tags on the
    candidate.

    The alias move is the one write that changes who is champion: before it only the candidate's evaluation
    tags are written, after it its decision tags and the old champion's ``champion.replaced_by``. A failure
    part-way (MLflow unreachable) therefore never leaves a version tagged ``promoted`` without the alias, nor a
    champion tagged as replaced.
    """
    require_registered_model(client, name)
    version = str(version)
    client.get_model_version(name, version)
    score, interval = _checked_candidate(score, interval, protocol_id, metric)
    _tag_evaluation(client, name, version, score, interval, protocol_id, metric)
    champion = version_by_alias(client, name, CHAMPION)
    decision = _decide(champion, version, score, protocol_id, metric, lower_is_better)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _move_aliases(client, name, version, decision)
    _tag_decision(client, name, version, decision, interval, protocol_id, metric, lower_is_better, when)
    if decision.decision == "promoted" and champion is not None and decision.champion_version != version:
        client.set_model_version_tag(name, champion.version, "champion.replaced_by", version)
        client.set_model_version_tag(name, champion.version, "champion.replaced_time", when)
    return decision


def _checked_candidate(score: float, interval: tuple[float, float] | None, protocol_id: str,
                       metric: str) -> tuple[float, tuple[float, float] | None]:
    if not protocol_id:
        raise ValueError("protocol_id must be a non-empty evaluation protocol id")
    if interval is not None:
        interval = (float(interval[0]), float(interval[1]))
        if not interval[0] <= interval[1]:
            raise ValueError(f"interval {interval} of {metric}: the low end must not exceed the high end")
    return float(score), interval


def _tag_evaluation(client: MlflowClient, name: str, version: str, score: float,
                    interval: tuple[float, float] | None, protocol_id: str, metric: str) -> None:
    """The candidate's protocol, score and interval as version tags (what a later challenger compares to)."""
    client.set_model_version_tag(name, version, "eval.protocol_id", protocol_id)
    client.set_model_version_tag(name, version, f"eval.{metric}", repr(score))
    if interval is not None:
        for key, value in zip(_interval_tags(metric), interval):
            client.set_model_version_tag(name, version, key, repr(value))


def _decide(champion, version: str, score: float, protocol_id: str, metric: str, lower_is_better: bool) -> Decision:
    """The gate's decision for the candidate against the current ``champion`` (or none)."""
    champion_version = str(champion.version) if champion is not None else None  # SQLite stores give ints
    if champion is None or champion_version == version:
        reason = "no champion yet" if champion is None else "already champion"
        return Decision("promoted", version, champion_version, score, None, reason, None)
    champ_protocol = champion.tags.get("eval.protocol_id")
    raw = champion.tags.get(f"eval.{metric}")
    champ_score = float(raw) if raw is not None else None
    champ_interval = recorded_interval(champion.tags, metric)
    beyond = f"beyond champion's interval [{champ_interval[0]:.6g}, {champ_interval[1]:.6g}]" if champ_interval \
        else "than champion's score (no interval recorded)"
    if champ_protocol != protocol_id or champ_score is None:
        decision = "incomparable"
        reason = (f"champion v{champion.version} was evaluated under protocol {champ_protocol!r} "
                  f"({metric}={raw}), candidate under {protocol_id!r}")
    elif beats(score, champ_score, champ_interval, lower_is_better):
        decision, reason = "promoted", f"{metric} {score:.6g} is better {beyond} (champion {champ_score:.6g})"
    else:
        decision, reason = "rejected", f"{metric} {score:.6g} is not better {beyond} (champion {champ_score:.6g})"
    return Decision(decision, version, champion_version, score, champ_score, reason, champ_interval)


def _tag_decision(client: MlflowClient, name: str, version: str, decision: Decision,
                  interval: tuple[float, float] | None, protocol_id: str, metric: str, lower_is_better: bool,
                  when: str) -> None:
    """The decision, the rule and both sides' numbers as tags on the candidate version."""
    direction = "lower" if lower_is_better else "higher"
    tags = {
        "promotion.decision": decision.decision, "promotion.reason": decision.reason,
        "promotion.rule": f"{metric} {direction} is better, same protocol; beyond the champion's bootstrap "
                          "interval when it has one",
        "promotion.candidate_score": repr(decision.candidate_score), "promotion.protocol_id": protocol_id,
        "promotion.metric": metric,
        "promotion.candidate_interval": repr(list(interval)) if interval is not None else "",
        "promotion.champion_version": decision.champion_version or "",
        "promotion.champion_score": repr(decision.champion_score) if decision.champion_score is not None else "",
        "promotion.champion_interval": repr(list(decision.champion_interval))
        if decision.champion_interval is not None else "",
        "promotion.time": when,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _move_aliases(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Promoted: the candidate becomes champion (a challenger alias on the candidate is dropped first).
    Rejected: the candidate becomes challenger. Incomparable: nothing moves."""
    if decision.decision == "promoted":
        challenger = version_by_alias(client, name, CHALLENGER)
        if challenger is not None and str(challenger.version) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
        client.set_registered_model_alias(name, CHAMPION, version)
    elif decision.decision == "rejected":
        client.set_registered_model_alias(name, CHALLENGER, version)


def alias_problems(client: MlflowClient, name: str, metric: str, lower_is_better: bool = True) -> list[str]:
    """What is inconsistent about the aliases of ``name`` (empty = consistent): versions but no champion, a
    champion not tagged ``promoted``, a challenger that is the champion or not tagged ``rejected``, and any
    version evaluated under the champion's protocol that :func:`beats` the champion (the gate would have
    promoted it, so a race or a lost update left the alias behind)."""
    versions = client.search_model_versions(f"name='{name}'")
    champion = version_by_alias(client, name, CHAMPION)
    if champion is None:
        return [f"{len(versions)} versions of {name!r} but no {CHAMPION!r} alias"] if versions else []
    problems = []
    if champion.tags.get("promotion.decision") != "promoted":
        problems.append(f"champion v{champion.version} has promotion.decision={champion.tags.get('promotion.decision')!r}")
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and (str(challenger.version) == str(champion.version)
                                   or challenger.tags.get("promotion.decision") != "rejected"):
        problems.append(f"challenger v{challenger.version} (decision {challenger.tags.get('promotion.decision')!r}) "
                        f"beside champion v{champion.version}")
    raw = champion.tags.get(f"eval.{metric}")
    if raw is None:
        return problems + [f"champion v{champion.version} has no eval.{metric} tag"]
    protocol, interval = champion.tags.get("eval.protocol_id"), recorded_interval(champion.tags, metric)
    for v in versions:
        score = v.tags.get(f"eval.{metric}")
        if (str(v.version) != str(champion.version) and score is not None and v.tags.get("eval.protocol_id") == protocol
                and beats(float(score), float(raw), interval, lower_is_better)):
            problems.append(f"v{v.version} ({metric} {float(score):.6g}) beats champion v{champion.version} "
                            f"({float(raw):.6g}) under protocol {protocol!r}")
    return problems


def log_dataset(client: MlflowClient, run_id: str, features, targets=None, source: str | None = None,
                name: str | None = None, digest: str | None = None, context: str = "training"):
    """Record a numpy dataset as an input of ``run_id`` (``mlflow.data`` + ``log_inputs``); returns it."""
    dataset = mlflow.data.from_numpy(features, source=source, targets=targets, name=name, digest=digest)
    entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
    client.log_inputs(run_id, datasets=[entry])
    return dataset
