"""MLflow goes down at registration, at the gate's alias write (the one write that makes a candidate champion):
the registry keeps its previous champion and nothing is promoted half-way (no version tagged ``promoted``
without the alias, no champion tagged as replaced); once MLflow is back the re-run registers and promotes."""
from __future__ import annotations

import time
import uuid

import pytest

from flows.records import Records
from tests.faults.conftest import TINY, FlowInThread, artefact_problems
from tests.faults.proxy import TripProxy

pytestmark = pytest.mark.integration

MODEL = f"gd-faults-mlflow-{uuid.uuid4().hex[:6]}"
PARAMS = {**TINY, "train_steps": 2, "register_models": True, "model_name": MODEL}
ALIAS_WRITE = rb"POST /api/2\.0/mlflow/registered-models/alias "
UNBEATABLE = "1e9"  # a recorded champion score every candidate beats, so the gate decides to promote


def _versions(client) -> dict[str, dict]:
    """Each version's tags and aliases (read one by one: search results carry no aliases)."""
    numbers = [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")]
    return {n: {**(v := client.get_model_version(MODEL, n)).tags, "aliases": sorted(v.aliases)} for n in numbers}


def test_mlflow_down_at_registration_keeps_the_champion(fault_stack, monkeypatch):
    from infra.process import stop
    from registry.mlflow_registry import CHAMPION, alias_problems, version_by_alias

    config = fault_stack.config
    t0 = time.monotonic()
    first = FlowInThread(PARAMS, fault_stack.records).result()
    assert first.is_completed(), first
    client = Records(fault_stack.records).mlflow
    champion = version_by_alias(client, MODEL, CHAMPION)
    for key in ("eval.fd_fmnist", "eval.fd_fmnist_ci_low", "eval.fd_fmnist_ci_high"):
        client.set_model_version_tag(MODEL, champion.version, key, UNBEATABLE)
    before = _versions(client)
    print(f"champion v{champion.version} registered in {time.monotonic() - t0:.1f}s")

    proxy = TripProxy(config.mlflow_port, ALIAS_WRITE,
                      lambda: stop("mlflow", config.state_dir.resolve(), config.stop_timeout_s))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # MLflow's default: 7, about 4 minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    candidate = {**PARAMS, "weights": "raw"}  # the same training, another evaluation: a new candidate version
    try:
        t1 = time.monotonic()
        state = FlowInThread(candidate, fault_stack.records).result()
        assert proxy.tripped.is_set(), "the gate never wrote an alias"
        print(f"flow failed {time.monotonic() - proxy.trip_time:.1f}s after MLflow stopped "
              f"({time.monotonic() - t1:.1f}s in all)")
    finally:
        proxy.close()
    assert state.is_failed(), state
    # the error is the alias write that failed (not a later call on the way out, which fails the same way)
    assert f"{proxy.url}/api/2.0/mlflow/registered-models/alias" in state.message, state.message
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fault_stack.env["MLFLOW_TRACKING_URI"])
    fault_stack.restart("mlflow")

    after = _versions(client)
    [new] = set(after) - set(before)  # the candidate was created and evaluated, then MLflow went away
    assert after[champion.version]["aliases"] == [CHAMPION]  # the champion kept its alias ...
    assert "champion.replaced_by" not in after[champion.version]  # ... and is not marked as replaced
    assert after[new]["aliases"] == [] and "promotion.decision" not in after[new], after[new]
    assert all(v.get("promotion.decision") != "promoted" for k, v in after.items() if k != champion.version)
    assert artefact_problems(fault_stack) == []

    t2 = time.monotonic()
    again = FlowInThread(candidate, fault_stack.records).result()
    print(f"re-run with MLflow back: {time.monotonic() - t2:.1f}s")
    assert again.is_completed(), again
    [row] = again.result()["rows"]
    assert row["decision"] == "promoted"
    now = version_by_alias(client, MODEL, CHAMPION)
    assert str(now.version) == str(row["version"]) and now.tags["promotion.decision"] == "promoted"
    assert client.get_model_version(MODEL, champion.version).tags["champion.replaced_by"] == str(row["version"])
    assert alias_problems(client, MODEL, "fd_fmnist") == []
    assert artefact_problems(fault_stack) == []
