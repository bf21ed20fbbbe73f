"""Runs read in bulk from a database store are exactly what ``MlflowClient.search_runs`` returns; a store that
transfuse opens gets its tag and param values indexed."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from sqlalchemy.exc import OperationalError

from transfuse.tracking import bulk
from transfuse.tracking.query import finished_runs
from transfuse.tracking.store import VALUE_INDEXES, open_store


@pytest.fixture(scope="module")
def store(module_dir: Path, _empty_store: Path) -> tuple[MlflowClient, list[str]]:
    """Two experiments of runs of every status, one deleted, one nameless, one with a NaN metric, one without
    the ``stage`` tag; start times one minute apart. The tests only read it."""
    path = module_dir / "mlflow.db"
    shutil.copyfile(_empty_store, path)
    client = MlflowClient(f"sqlite:///{path}")
    ids = [client.create_experiment("a"), client.create_experiment("b")]
    statuses = ["FINISHED", "FINISHED", "FAILED", "FINISHED", "RUNNING", "FINISHED", "KILLED", "FINISHED"]
    for i, status in enumerate(statuses * 2):
        start = 1_780_000_000_000 + i * 60_000
        run = client.create_run(ids[i % 2], start_time=start, run_name=None if i == 3 else f"run-{i}")
        tags = [RunTag("seed", str(i % 3)), RunTag("sweeps", f"multirun/2026-11-0{i % 4}/07-01-0{i % 5}")]
        tags += [] if i == 5 else [RunTag("stage", ["pretrain", "finetune"][i % 2])]
        tags += [RunTag("note", "it's")] if i == 6 else []
        params = [Param("seed", str(i % 3)), Param("optimizer.lr", str(10.0 ** -(i % 4))), Param("i", str(i))]
        metrics = [Metric("test/acc", math.nan if i == 4 else i / 20, start, 0), Metric("val/acc", 0.5, start, 3)]
        metrics += [Metric("val/acc", 0.1 * (i % 7), start + 1, 4)]  # the latest point is the one kept
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status, end_time=start + 30_000)
        if i == 9:
            client.delete_run(run.info.run_id)
    return client, ids


def _same(got: list, want: list) -> None:
    assert [r.info.run_id for r in got] == [r.info.run_id for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.info.to_proto() == b.info.to_proto()
        assert _nan_free(a.data.to_dictionary()) == _nan_free(b.data.to_dictionary())


def _nan_free(data: dict) -> dict:
    """NaN is not equal to itself: a string stands for it."""
    return {**data, "metrics": {k: "nan" if math.isnan(v) else v for k, v in data["metrics"].items()}}


@pytest.mark.parametrize(
    "filter_string",
    [
        "",
        "attributes.status = 'FINISHED'",
        "tags.stage = 'pretrain' and params.seed = '1'",
        "tags.sweeps LIKE '%07-01-02%' and attributes.status = 'FINISHED'",
        "tags.stage != 'pretrain'",
        "tags.stage IS NULL",
        'tags.note = "it\'s"',
        "metrics.`test/acc` > 0.2 and metrics.`val/acc` < 0.5",
        "params.`optimizer.lr` = '0.01'",
        "attributes.run_name LIKE 'run-1%'",
        "tags.stage ILIKE 'PRE%'",
    ],
)
@pytest.mark.parametrize("order_by", [[], ["attributes.start_time ASC"], ["metrics.`test/acc` DESC", "params.i"]])
def test_reading_in_bulk_returns_what_mlflow_searches(store, filter_string, order_by):
    client, ids = store
    want = client.search_runs(ids, filter_string, order_by=order_by, max_results=1000)
    assert want  # every filter selects some runs
    _same(bulk.read(client.tracking_uri, ids, filter_string, order_by), want)
    _same(
        bulk.read(client.tracking_uri, ids[:1], filter_string, order_by),
        [r for r in want if r.info.experiment_id == ids[0]],
    )


def test_a_report_sized_search_reads_in_bulk_and_falls_back_to_mlflow(store, monkeypatch):
    client, ids = store
    want = client.search_runs(ids, "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    read = bulk.read
    calls = []
    monkeypatch.setattr(bulk, "read", lambda *args: calls.append(args) or read(*args))
    _same(finished_runs(client, ids), want)
    assert len(calls) == 1
    assert [r.info.run_id for r in finished_runs(client, ids, max_results=1)] == [want[0].info.run_id]
    assert len(calls) == 1  # a search for one run (the skip check) asks MLflow

    def locked(*args):
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(bulk, "read", locked)
    _same(finished_runs(client, ids), want)
    assert not bulk.is_database("http://127.0.0.1:5000") and bulk.is_database("postgresql+psycopg2://u@/db")


def test_a_store_opened_by_transfuse_indexes_tag_and_param_values(tracking_uri):
    open_store(tracking_uri)
    open_store(tracking_uri)  # a second opening finds them
    with sqlite3.connect(tracking_uri.removeprefix("sqlite:///")) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = db.execute("EXPLAIN QUERY PLAN SELECT run_uuid FROM tags WHERE key = 'config_hash' AND value = 'x'")
        steps = " ".join(str(step) for step in plan)
    assert set(VALUE_INDEXES) <= names
    assert "transfuse_tags_value (key=? AND value=?)" in steps  # the skip check's look-up reads one entry
