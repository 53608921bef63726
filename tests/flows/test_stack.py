"""The pipeline on the local stack (PostgreSQL, S3, Prefect server + process worker, MLflow server): a flow run,
its records (nested MLflow runs, champion alias, S3 layout, catalogue lineage), the cache on a second run,
a deployment triggered through the REST API, invalid parameters, a failing stage, and cancellation."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flows.data_space import CLASSIFIER as DATA_CLASSIFIER
from flows.params import PipelineParams
from flows.records import Records, RecordsConfig

pytestmark = pytest.mark.integration

MODEL_NAME = f"gd-flows-{uuid.uuid4().hex[:6]}"
TINY = dict(
    variants=["baseline", "groupdiff-l"], group_size=2, data_limit=200, train_steps=2, batch_images=8,
    sampling_steps=2, num_samples=40, reference_limit=100, classifier_train_limit=200, threads=1,
    model_name=MODEL_NAME,
    overrides=["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "embed.classifier.eval_limit=100",
               "embed.classifier.width=8", "embed.classifier.feature_dim=16"],
)
STAGES = {"classifier", "embed", "mine", "train", "sample", "score", "register"}
WAIT_S = 600


@pytest.fixture(scope="module")
def stack(local_stack, stack_api, tmp_path_factory):
    """The stack's client environment (set for this module by ``stack_api``), an output folder and its records."""
    out = tmp_path_factory.mktemp("flows-out")
    return {"env": stack_api, "out": out, "records": RecordsConfig(out=str(out)), "config": local_stack}


@pytest.fixture(scope="module")
def first_run(stack):
    from flows.pipeline import pipeline

    state = pipeline(params=PipelineParams(**TINY), records=stack["records"], return_state=True)
    assert state.is_completed(), state.message
    return state.state_details.flow_run_id, state.result()


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def test_pipeline_records_on_the_stack(stack, first_run):
    from registry.catalogue.records import lineage_of_model_version
    from registry.mlflow_registry import CHAMPION, version_by_alias

    _, result = first_run
    rec = Records(stack["records"])
    assert rec.config.store_root.startswith("s3://") and rec.config.mlflow_uri.startswith("http")
    # MLflow: each stage's run nested under the pipeline's run; training metrics logged by the subprocess
    children = rec.mlflow.search_runs([rec.experiment_id()],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{result['mlflow_run_id']}'")
    names = {r.info.run_name for r in children}
    assert {n.split("-")[0] for n in names} == STAGES
    train_run = next(r for r in children if r.info.run_name == "train-groupdiff-l")
    assert "loss" in train_run.data.metrics and train_run.data.params["train.steps"] == "2"
    # registry: the better variant is champion
    best = min(result["rows"], key=lambda r: r["metrics"]["fd_fmnist"])
    champion = version_by_alias(rec.mlflow, MODEL_NAME, CHAMPION)
    assert champion is not None and champion.version == best["version"] and best["decision"] == "promoted"
    # S3 layout of DESIGN 2.3
    keys = rec.store.list("")
    for prefix in ("weights/classifier/", "embeddings/pixels/", "groups/", "checkpoints/baseline-",
                   "checkpoints/groupdiff-l-", "samples/baseline-"):
        assert any(k.startswith(prefix) for k in keys), (prefix, keys[:20])
    assert any(k.endswith("/samples.npz") for k in keys) and any(k.endswith("/model.safetensors") for k in keys)
    # catalogue lineage of the GroupDiff-l version: checkpoint -> groups -> embeddings -> dataset, evaluation
    gdl = next(r for r in result["rows"] if r["variant"] == "groupdiff-l")
    with rec.catalogue() as session:
        lineage = lineage_of_model_version(session, MODEL_NAME, int(gdl["version"]))
        assert lineage.checkpoint.uri == gdl["checkpoint"]
        assert lineage.group_table is not None and lineage.embedding_set.encoder == "pixels"
        assert lineage.dataset is not None and lineage.evaluations[0].value == pytest.approx(gdl["metrics"]["fd_fmnist"])


def test_second_identical_run_is_served_from_cache(stack, first_run):
    from flows.pipeline import pipeline

    out: Path = stack["out"]
    logs = {p: p.stat().st_mtime_ns for p in out.glob("work/train/*/train.log")}
    assert len(logs) == 2
    state = pipeline(params=PipelineParams(**TINY), records=stack["records"], return_state=True)
    assert state.is_completed()
    states = _task_states(state.state_details.flow_run_id)
    cached = {name.rsplit("-", 1)[0] for name, s in states.items() if s == "Cached"}
    assert STAGES <= cached, states
    assert {p: p.stat().st_mtime_ns for p in out.glob("work/train/*/train.log")} == logs  # no training started
    assert not list(out.glob("pids/*/*"))
    assert state.result()["rows"] == first_run[1]["rows"]


def test_failing_stage_leaves_registry_untouched(stack, first_run):
    from flows.pipeline import pipeline

    rec = Records(stack["records"])
    before = {(v.version, tuple(sorted(v.aliases))) for v in rec.mlflow.search_model_versions(f"name='{MODEL_NAME}'")}
    params = PipelineParams(**{**TINY, "encoder": "clip", "overrides": TINY["overrides"] + ["embed.weights=/nonexistent.pt"]})
    state = pipeline(params=params, records=stack["records"], return_state=True)
    assert state.is_failed()
    after = {(v.version, tuple(sorted(v.aliases))) for v in rec.mlflow.search_model_versions(f"name='{MODEL_NAME}'")}
    assert after == before


@pytest.fixture(scope="module")
def deployment(stack):
    from flows.deployments import deploy

    deploy(stack["config"].work_pool)
    api = stack["env"]["PREFECT_API_URL"]
    found = httpx.get(f"{api}/deployments/name/groupdiff-pipeline/groupdiff-pipeline").json()
    return api, found["id"]


def _wait(api: str, run_id: str, done=("COMPLETED", "FAILED", "CRASHED", "CANCELLED")) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}").json()
        if run["state"]["type"] in done:
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} did not finish in {WAIT_S}s: {run['state']}")


def test_deployment_triggered_through_rest_runs_with_those_parameters(stack, first_run, deployment):
    api, dep_id = deployment
    params = {**TINY, "variants": ["baseline"], "register_models": False, "cfg_scale": 2.0}
    sent = {"params": params, "records": {"out": str(stack["out"])}}
    created = httpx.post(f"{api}/deployments/{dep_id}/create_flow_run", json={"parameters": sent})
    assert created.status_code == 201, created.text
    run = _wait(api, created.json()["id"])
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["parameters"] == sent
    rec = Records(stack["records"])
    found = rec.mlflow.search_runs([rec.experiment_id()], filter_string=f"tags.`prefect.flow_run_id` = '{run['id']}'")
    assert len(found) == 1
    logged = found[0].data.params
    assert logged["cfg_scale"] == "2.0" and logged["variants"] == "['baseline']" and logged["train_steps"] == "2"


@pytest.mark.parametrize("field,value", [("group_size", 0), ("variants", ["baseline", "nope"]), ("threshold", 2.0)])
def test_invalid_parameters_rejected_by_the_server(stack, deployment, field, value):
    api, dep_id = deployment
    before = httpx.post(f"{api}/flow_runs/count", json={}).json()
    response = httpx.post(f"{api}/deployments/{dep_id}/create_flow_run",
                          json={"parameters": {"params": {**TINY, field: value}}})
    assert response.status_code in (409, 422), response.text
    assert field in response.text
    assert httpx.post(f"{api}/flow_runs/count", json={}).json() == before


def test_cancelling_during_training_leaves_no_training_process(stack, first_run, deployment):
    api, dep_id = deployment
    params = {**TINY, "variants": ["baseline"], "register_models": False, "train_steps": 1_000_000, "seed": 7}
    created = httpx.post(f"{api}/deployments/{dep_id}/create_flow_run",
                         json={"parameters": {"params": params, "records": {"out": str(stack["out"])}}})
    run_id = created.json()["id"]
    folder = stack["out"] / "pids" / run_id
    deadline = time.monotonic() + WAIT_S
    while not (folder.is_dir() and any(folder.iterdir())):
        assert time.monotonic() < deadline, "training never started"
        state = httpx.get(f"{api}/flow_runs/{run_id}").json()["state"]["type"]
        assert state not in ("FAILED", "CRASHED", "COMPLETED"), state
        time.sleep(1)
    pgid = int(next(folder.iterdir()).name)
    time.sleep(3)  # well inside training
    os.killpg(pgid, 0)  # alive now
    httpx.post(f"{api}/flow_runs/{run_id}/set_state", json={"state": {"type": "CANCELLING"}, "force": True})
    run = _wait(api, run_id, done=("CANCELLED", "FAILED", "CRASHED", "COMPLETED"))
    assert run["state"]["type"] == "CANCELLED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    raise AssertionError(f"training process group {pgid} still alive after cancellation")


# -- restart safety (issue 18): the stack keeps every record across a restart of S3 and of the whole stack --------
# These run last in this module: they reuse the pipeline run above (no second training) and restart the session's
# stack on the same ports and state folder, so later modules find it as it was.

def _records_survive(stack, first_run, tmp_path) -> None:
    """The champion loads through MLflow and samples; every checkpoint and sample set the catalogue lists reads
    back with its recorded size and sha256; the consistency check is clean: nothing missing, corrupt or
    unreferenced."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sqlalchemy import select

    from registry.catalogue.models import Checkpoint, Evaluation, Weights
    from registry.consistency import CORRUPT, MISSING, UNREFERENCED, UNVERIFIABLE, check, key_in_store

    rec = Records(stack["records"])
    assert os.environ["MLFLOW_TRACKING_URI"] == stack["env"]["MLFLOW_TRACKING_URI"]  # set by the stack fixture
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    images = model.predict(pd.DataFrame({"label": [3]}), params={"group_size": 2, "num_steps": 2})
    assert images.shape[0] == 2 and np.isfinite(images).all()
    with rec.catalogue() as session:
        checkpoints = session.scalars(select(Checkpoint)).all()
        evaluations = session.scalars(select(Evaluation)).all()
    assert {c.uri for c in checkpoints} >= {r["checkpoint"] for r in first_run[1]["rows"]}
    read = 0
    for row in checkpoints:
        keys = rec.store.list(key_in_store(rec.store, row.uri))
        assert any(k.endswith("/model.safetensors") for k in keys), (row.uri, keys)
        for key in keys:
            rec.store.get_file(key, tmp_path / "object")  # raises on a size or sha256 mismatch
            read += 1
    for row in evaluations:
        rec.store.get_file(key_in_store(rec.store, row.uri), tmp_path / "samples.npz")
        with np.load(tmp_path / "samples.npz") as samples:
            assert len(samples["arr_0"] if "arr_0" in samples else samples[samples.files[0]]) > 0
        read += 1
    assert read >= 2 * len(checkpoints)
    with rec.catalogue() as session:
        report = check(rec.store, session, rec.config.mlflow_uri)
    assert report.of(MISSING) == [] and report.of(CORRUPT) == [] and report.exit_code == 0, report.problems
    assert report.model_versions >= 2 and report.objects_verified >= read
    # clean: every object the pipeline wrote is referenced (the classifier's weights by their catalogue row, the
    # sample sets of the REST-triggered run that registered nothing by their evaluation rows), and every folder's
    # manifest lists its files
    assert report.of(UNREFERENCED) == [] and report.of(UNVERIFIABLE) == [], report.problems
    with rec.catalogue() as session:
        weights = session.scalars(select(Weights)).all()
    # the built-in classifier, and on a stack shared with tests/flows/test_dataset_versions.py the data space's
    # (flows/data_space.py): each row's weights under weights/<its name>/
    assert "classifier" in {w.name for w in weights}, [(w.name, w.uri) for w in weights]
    assert all(w.name in ("classifier", DATA_CLASSIFIER) and key_in_store(rec.store, w.uri).startswith(f"weights/{w.name}/")
               for w in weights), [(w.name, w.uri) for w in weights]


def _model_versions(stack) -> set:
    rec = Records(stack["records"])
    return {(v.version, tuple(sorted(v.aliases))) for v in rec.mlflow.search_model_versions(f"name='{MODEL_NAME}'")}


def test_records_survive_a_restart_of_the_s3_server(stack, first_run, tmp_path):
    from infra.process import read_pid, stop
    from infra.stack import status, up

    config = stack["config"]
    state = config.state_dir.resolve()
    before = read_pid(state, "s3")
    t0 = time.monotonic()
    assert stop("s3", state, config.stop_timeout_s)
    assert [r.healthy for r in status(config) if r.name == "s3"] == [False]
    up(config, echo=lambda _: None)
    assert read_pid(state, "s3") != before and all(r.healthy for r in status(config))
    print(f"s3 restart took {time.monotonic() - t0:.1f}s")
    _records_survive(stack, first_run, tmp_path)


def test_records_survive_a_restart_of_the_whole_stack_and_the_deployment_is_served_from_cache(
        stack, first_run, deployment, tmp_path):
    from prefect.settings import get_current_settings

    from infra.process import read_pid
    from infra.stack import down, status, up

    config = stack["config"]
    versions = _model_versions(stack)
    pids = {name: read_pid(config.state_dir.resolve(), name) for name in config.services}
    t0 = time.monotonic()
    assert down(config, echo=lambda _: None) == ["mlflow", "worker", "prefect", "s3", "postgres"]
    up(config, echo=lambda _: None)
    print(f"whole-stack restart took {time.monotonic() - t0:.1f}s")
    rows = status(config)
    assert all(r.healthy for r in rows) and all(r.pid != pids[r.name] for r in rows)
    _records_survive(stack, first_run, tmp_path)
    # the same deployment, the same parameters: every stage is served from the cache, nothing is retrained or
    # registered again. The worker's flow run reads the cached results where the first run wrote them.
    api, dep_id = deployment
    out: Path = stack["out"]
    logs = {p: p.stat().st_mtime_ns for p in out.glob("work/train/*/train.log")}
    assert len(logs) >= 2  # the two variants of the first run (and the cancelled run's, when that test ran)
    storage = str(get_current_settings().results.local_storage_path)
    created = httpx.post(f"{api}/deployments/{dep_id}/create_flow_run", json={
        "parameters": {"params": TINY, "records": {"out": str(out)}},
        "job_variables": {"env": {"PREFECT_LOCAL_STORAGE_PATH": storage}},
    })
    assert created.status_code == 201, created.text
    run = _wait(api, created.json()["id"])
    assert run["state"]["type"] == "COMPLETED", run["state"]
    states = _task_states(run["id"])
    cached = {name.rsplit("-", 1)[0] for name, s in states.items() if s == "Cached"}
    assert STAGES <= cached, states
    assert {p: p.stat().st_mtime_ns for p in out.glob("work/train/*/train.log")} == logs
    assert _model_versions(stack) == versions


def test_check_names_an_object_deleted_by_hand_and_the_rows_that_point_to_it(stack, first_run, tmp_path, capsys):
    """Delete the champion's sample set behind the store's back (raw S3 call): ``groupdiff check`` names it,
    the evaluation row and the model version tag pointing at it, and exits 1; restored, the check is clean."""
    from infra.cli import main
    from registry.consistency import MISSING, check, key_in_store
    from registry.mlflow_registry import CHAMPION, version_by_alias

    rec = Records(stack["records"])
    champion = version_by_alias(rec.mlflow, MODEL_NAME, CHAMPION)
    uri = champion.tags["groupdiff.samples"]
    key = key_in_store(rec.store, uri)
    rec.store.get_file(key, tmp_path / "samples.npz")  # to put back afterwards
    rec.store.client.remove_object(rec.store.bucket, rec.store._name(key))
    try:
        with rec.catalogue() as session:
            report = check(rec.store, session, rec.config.mlflow_uri)
        [missing] = [p for p in report.of(MISSING) if p.target == uri]
        assert any(w.startswith("catalogue evaluations #") for w in missing.referenced_by), missing
        assert f"mlflow model {MODEL_NAME} v{champion.version} (tag groupdiff.samples)" in missing.referenced_by
        code = main(["check", "--store-root", rec.config.store_root, "--catalogue-url", rec.config.catalogue_url,
                     "--mlflow-uri", rec.config.mlflow_uri, "--no-verify-data"])
        out = capsys.readouterr().out
        assert code == 1 and f"MISSING      {uri}" in out and "referenced by catalogue evaluations #" in out
    finally:
        rec.store.put_file(key, tmp_path / "samples.npz")
    with rec.catalogue() as session:
        assert check(rec.store, session, rec.config.mlflow_uri).exit_code == 0
