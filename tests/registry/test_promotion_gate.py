"""The registry gate with bootstrap intervals, on a local SQLite MLflow (no server)."""
from __future__ import annotations

import pytest

from registry.mlflow_registry import CHALLENGER, CHAMPION, beats, promote_if_better, version_by_alias


@pytest.fixture
def client(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("gate")
    return client


def _version(client) -> str:
    return str(client.create_model_version("gate", source="file:///nowhere").version)


def test_beats_needs_the_far_side_of_the_interval():
    assert beats(9.0, 10.0, None, lower_is_better=True)  # no interval: plainly better
    assert not beats(9.0, 10.0, (8.5, 11.5), lower_is_better=True)  # inside the interval
    assert beats(8.4, 10.0, (8.5, 11.5), lower_is_better=True)
    assert not beats(11.0, 10.0, (8.5, 11.5), lower_is_better=False)
    assert beats(11.6, 10.0, (8.5, 11.5), lower_is_better=False)


def test_gate_refuses_a_challenger_inside_the_champions_interval_and_records_why(client):
    champion = _version(client)
    first = promote_if_better(client, "gate", champion, 100.0, "proto", metric="fd_fmnist", interval=(90.0, 112.0))
    assert first.decision == "promoted"
    tags = client.get_model_version("gate", champion).tags
    assert float(tags["eval.fd_fmnist_ci_low"]) == 90.0 and float(tags["eval.fd_fmnist_ci_high"]) == 112.0
    # better by its point value (95 < 100) but inside the champion's interval: refused
    inside = _version(client)
    decision = promote_if_better(client, "gate", inside, 95.0, "proto", metric="fd_fmnist", interval=(85.0, 106.0))
    assert decision.decision == "rejected" and decision.champion_interval == (90.0, 112.0)
    assert str(version_by_alias(client, "gate", CHAMPION).version) == champion
    assert str(version_by_alias(client, "gate", CHALLENGER).version) == inside
    tags = client.get_model_version("gate", inside).tags
    assert tags["promotion.decision"] == "rejected"
    assert tags["promotion.champion_interval"] == repr([90.0, 112.0])
    assert tags["promotion.candidate_interval"] == repr([85.0, 106.0])
    assert "beyond champion's interval [90, 112]" in tags["promotion.reason"]
    # beyond the interval: promoted, and its own interval becomes the bar
    beyond = _version(client)
    decision = promote_if_better(client, "gate", beyond, 80.0, "proto", metric="fd_fmnist", interval=(72.0, 89.0))
    assert decision.decision == "promoted" and str(version_by_alias(client, "gate", CHAMPION).version) == beyond
    assert str(version_by_alias(client, "gate", CHALLENGER).version) == inside
    close = _version(client)
    assert promote_if_better(client, "gate", close, 73.0, "proto", metric="fd_fmnist").decision == "rejected"


def test_champion_without_interval_is_compared_by_score(client):
    old = _version(client)
    promote_if_better(client, "gate", old, 100.0, "proto", metric="fd_fmnist")
    new = _version(client)
    decision = promote_if_better(client, "gate", new, 99.0, "proto", metric="fd_fmnist", interval=(90.0, 110.0))
    assert decision.decision == "promoted" and "no interval recorded" in decision.reason
    with pytest.raises(ValueError, match="low end must not exceed the high end"):
        promote_if_better(client, "gate", _version(client), 1.0, "proto", metric="fd_fmnist", interval=(2.0, 1.0))
