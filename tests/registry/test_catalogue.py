"""The SQL catalogue on SQLite and on a real PostgreSQL: migrations, records, lineage."""
from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from registry.catalogue import (
    Base, check_url, current_revision, downgrade, head_revision, lineage_of_model_version, make_engine, open_session,
    record_checkpoint, record_dataset, record_embedding_set, record_evaluation, record_group_table,
    record_model_version, record_weights, upgrade_to_head,
)
from registry.catalogue.records import checkpoints_using_groups

pytestmark = pytest.mark.integration
TABLES = {"datasets", "embedding_sets", "group_tables", "checkpoints", "evaluations", "model_versions", "weights"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    stack = request.getfixturevalue("local_stack")
    from infra import postgres

    name = f"cat_{uuid.uuid4().hex[:10]}"  # an empty database per test
    postgres.create_databases(stack.postgres_port, [name])
    return postgres.url(stack.postgres_port, name)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_migrations_upgrade_an_empty_database_match_the_models_and_downgrade(url):
    assert _tables(url) == set() and current_revision(url) is None
    assert upgrade_to_head(url) == head_revision()
    assert current_revision(url) == head_revision()
    assert _tables(url) == TABLES
    engine = make_engine(url)
    with engine.connect() as conn:  # the migrations build exactly what the models declare
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
    upgrade_to_head(url)  # idempotent
    downgrade(url, "base")
    assert _tables(url) == set() and current_revision(url) is None


def _populate(session):
    ds = record_dataset(session, "fmnist-train-32", "ds1", "s3://gd/data/fmnist", {"image_size": 32})
    other_ds = record_dataset(session, "fmnist-test-32", "ds2", "s3://gd/data/fmnist-test")
    emb = record_embedding_set(session, ds, "dinov2-s", "emb1", "s3://gd/embeddings/dinov2-s/emb1")
    groups = record_group_table(session, emb, "grp1", "s3://gd/groups/grp1", {"group_size": 4})
    other_groups = record_group_table(session, emb, "grp2", "s3://gd/groups/grp2", {"group_size": 8})
    first = record_checkpoint(session, "run1", 1000, "ck1", "s3://gd/checkpoints/run1/00001000", ds, groups)
    resumed = record_checkpoint(session, "run2", 2000, "ck2", "s3://gd/checkpoints/run2/00002000", ds, groups,
                                parent=first)
    baseline = record_checkpoint(session, "run3", 500, "ck3", "s3://gd/checkpoints/run3/00000500", other_ds)
    record_checkpoint(session, "run4", 10, "ck4", "s3://gd/checkpoints/run4/00000010", ds, other_groups)
    ev = record_evaluation(session, resumed, "fid-5k-v1", "fid", 12.5, "ev1", "s3://gd/samples/run2/e1/samples.npz")
    record_evaluation(session, baseline, "fid-5k-v1", "fid", 30.0, "ev2", "s3://gd/samples/run3/e1/samples.npz")
    record_model_version(session, "groupdiff", 6, "models:/groupdiff/6", baseline)
    record_model_version(session, "groupdiff", 7, "models:/groupdiff/7", resumed, ev, mlflow_run_id="abc")
    session.commit()


def test_lineage_query_returns_the_right_rows(url):
    maker = open_session(url)
    with maker() as session:
        _populate(session)
    with maker() as session:
        lin = lineage_of_model_version(session, "groupdiff", 7)
        assert lin.checkpoint.digest == "ck2" and lin.checkpoint.step == 2000
        assert [c.digest for c in lin.ancestors] == ["ck1"]
        assert lin.group_table.digest == "grp1" and lin.group_table.config == {"group_size": 4}
        assert lin.embedding_set.encoder == "dinov2-s"
        assert lin.dataset.name == "fmnist-train-32" and lin.dataset.config == {"image_size": 32}
        assert [(e.protocol_id, e.value) for e in lin.evaluations] == [("fid-5k-v1", 12.5)]
        assert lin.model_version.mlflow_run_id == "abc"
        base = lineage_of_model_version(session, "groupdiff", 6)
        assert base.group_table is None and base.embedding_set is None and base.dataset.digest == "ds2"
        assert [c.digest for c in checkpoints_using_groups(session, "grp1")] == ["ck1", "ck2"]
        with pytest.raises(KeyError, match=r"version 8 .*\[6, 7\]"):
            lineage_of_model_version(session, "groupdiff", 8)


def test_records_are_idempotent_and_conflicts_are_errors(url):
    maker = open_session(url)
    with maker() as session:
        a = record_dataset(session, "d", "same", "file:///a")
        b = record_dataset(session, "d", "same", "file:///a")
        assert a.id == b.id
        with pytest.raises(ValueError, match="already recorded at 'file:///a'"):
            record_dataset(session, "d", "same", "file:///elsewhere")
        with pytest.raises(ValueError, match="step must be >= 0"):
            record_checkpoint(session, "r", -1, "c", "file:///c", a)
        w = record_weights(session, "classifier", "clf1", "file:///weights/classifier/clf1", {"epochs": 1})
        assert record_weights(session, "classifier", "clf1", "file:///weights/classifier/clf1").id == w.id
        assert w.config == {"epochs": 1}
        with pytest.raises(ValueError, match="already recorded at 'file:///weights/classifier/clf1'"):
            record_weights(session, "classifier", "clf1", "file:///weights/other")
        with pytest.raises(ValueError, match="non-empty name"):
            record_weights(session, "", "clf2", "file:///weights/x")


@pytest.mark.parametrize("bad, match", [
    ("postgresql://u@localhost/db", "postgresql\\+psycopg2"),
    ("mysql+pymysql://u@localhost/db", "not supported"),
    ("not a url", "malformed"),
    ("postgresql+psycopg2://u:hunter2@localhost/", "names no database"),
])
def test_catalogue_url_with_the_wrong_driver_is_rejected(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        check_url(bad)
    assert "hunter2" not in str(err.value)


def test_catalogue_url_from_the_environment(tmp_path, monkeypatch):
    from registry.catalogue.db import default_url

    monkeypatch.delenv("GROUPDIFF_CATALOGUE_URL", raising=False)
    assert default_url() == "sqlite:///outputs/catalogue.db"
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("GROUPDIFF_CATALOGUE_URL", url)
    maker = open_session()
    with maker() as session:
        record_dataset(session, "d", "x1", "file:///d")
        session.commit()
    assert current_revision(url) == head_revision() and (tmp_path / "env.db").exists()
