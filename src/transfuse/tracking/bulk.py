"""Reading many runs at once straight from the tables of an MLflow database store (SQLite or PostgreSQL).

``MlflowClient.search_runs`` on a database builds an ORM object for every parameter, tag and metric of every run
it returns (MLflow's ``SqlAlchemyStore._search_runs``): a report over 10,000 runs of ~155 values each creates
1.5 million of them and took 68 s on two busy cores (``scripts/bench_store.py``), most of it in SQLAlchemy's
identity map and in the garbage collector that so many new objects set off. This module reads the same four
tables (``runs``, ``params``, ``tags``, ``latest_metrics``) with plain SELECTs into MLflow's own entities (the same
report: 4 to 7 s), and leaves MLflow's searching rules to MLflow: the filter is applied by
``SearchUtils.filter`` and the order by ``SearchUtils.sort``, the code of MLflow's file store. SQL only narrows
the candidates (by experiment, lifecycle stage, and the filter's = and LIKE on tags and params), so what comes
back is what ``search_runs`` returns. A tracking server hides its database and is searched through MLflow.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: URI schemes (before any ``+driver``) of the database stores read in bulk (tested on both; the SQL here would
#: need other quoting for MySQL, whose stores are searched through MLflow)
DATABASES = ("sqlite", "postgresql")


def is_database(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` names a database store read in bulk (``sqlite:///x.db``, ``postgresql+psycopg2://..``).

    >>> is_database("sqlite:///mlflow.db"), is_database("http://127.0.0.1:5000")
    (True, False)
    """
    return tracking_uri.partition(":")[0].partition("+")[0] in DATABASES


@cache
def _engine(tracking_uri: str) -> Engine:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(tracking_uri, poolclass=NullPool)  # a connection per search: nothing held in between


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a million short-lived objects are made: each generation-2 pass would
    scan all of them again. Collection resumes afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _narrowing(clauses: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """SQL conditions on ``runs`` implied by the filter's ``=`` and ``LIKE`` comparisons of tags and params and
    ``=`` of the status, as MLflow's SQL store writes them; every other comparison is left to
    ``SearchUtils.filter``, which checks them all again."""
    tables = {"tag": "tags", "parameter": "params"}
    conditions, values = [], {}
    for i, clause in enumerate(clauses):
        kind, comparator = clause.get("type"), str(clause.get("comparator", "")).upper()
        if comparator not in ("=", "LIKE") or not isinstance(clause.get("value"), str):
            continue
        if kind in tables:
            values |= {f"k{i}": clause["key"], f"v{i}": clause["value"]}
            conditions.append(
                f"runs.run_uuid IN (SELECT run_uuid FROM {tables[kind]} WHERE key = :k{i} AND value {comparator} :v{i})"
            )
        elif kind == "attribute" and clause.get("key") == "status" and comparator == "=":
            values[f"v{i}"] = clause["value"]
            conditions.append(f"runs.status = :v{i}")
    return conditions, values


def search_runs(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    filter_string: str = "",
    order_by: Sequence[str] = (),
    max_results: int = 50000,
) -> list[Run]:
    """What ``client.search_runs`` returns (active runs, start time newest first unless ``order_by`` says
    otherwise), read in bulk from a database store; a tracking server, or a database that cannot be read as
    MLflow's, is searched by ``client.search_runs`` itself.

    Raises:
        MlflowException: the filter or an order clause cannot be parsed.
    """
    from sqlalchemy.exc import SQLAlchemyError

    if not experiment_ids:
        return []
    if is_database(client.tracking_uri):
        try:
            return read(client.tracking_uri, experiment_ids, filter_string, order_by)[:max_results]
        except (SQLAlchemyError, ValueError) as err:  # another schema, a locked file: MLflow knows its store best
            log.debug("reading %s in bulk failed (%s); searching through MLflow", client.tracking_uri, err)
    runs = client.search_runs(list(experiment_ids), filter_string, order_by=list(order_by), max_results=max_results)
    return list(runs)


def read(
    tracking_uri: str, experiment_ids: Sequence[str], filter_string: str = "", order_by: Sequence[str] = ()
) -> list[Run]:
    """The active runs of ``experiment_ids`` in the database ``tracking_uri`` that match ``filter_string``, in
    the order ``order_by`` gives.

    Raises:
        MlflowException: the filter or an order clause cannot be parsed.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be read as an MLflow store.
    """
    from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
    from mlflow.utils.search_utils import SearchUtils
    from sqlalchemy import bindparam, text

    clauses = SearchUtils.parse_search_filter(filter_string)
    conditions, values = _narrowing(clauses)
    where = " AND ".join(["runs.experiment_id IN :experiments", "runs.lifecycle_stage = 'active'", *conditions])
    selected = f"SELECT runs.run_uuid FROM runs WHERE {where}"
    experiments = {"experiments": [int(i) for i in experiment_ids]}
    columns = "run_uuid, name, experiment_id, user_id, status, start_time, end_time, lifecycle_stage, artifact_uri"
    queries = {
        "runs": f"SELECT {columns} FROM runs WHERE run_uuid IN ({selected})",
        "params": f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({selected})",
        "tags": f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({selected})",
        "metrics": f"SELECT run_uuid, key, value, timestamp, step, is_nan FROM latest_metrics WHERE run_uuid IN "
        f"({selected})",
    }
    with _collector_paused(), _engine(tracking_uri).connect() as connection:
        rows = {}
        for name, query in queries.items():
            statement = text(query).bindparams(bindparam("experiments", expanding=True))
            rows[name] = connection.execute(statement, {**experiments, **values}).all()
        # a run created between two of the SELECTs has values but no row in rows["runs"]: it is left out
        found: dict[str, tuple[list, list, list]] = {row[0]: ([], [], []) for row in rows["runs"]}
        nowhere: tuple[list, list, list] = ([], [], [])
        for run_uuid, key, value in rows["params"]:
            found.get(run_uuid, nowhere)[0].append(Param(key, value))
        for run_uuid, key, value in rows["tags"]:
            found.get(run_uuid, nowhere)[1].append(RunTag(key, value))
        for run_uuid, key, value, timestamp, step, is_nan in rows["metrics"]:
            found.get(run_uuid, nowhere)[2].append(Metric(key, float("nan") if is_nan else value, timestamp, step))
        runs = []
        for run_uuid, name, experiment_id, user_id, status, start, end, stage, artifact_uri in rows["runs"]:
            params, tags, metrics = found[run_uuid]
            data = RunData(metrics=metrics, params=params, tags=tags)
            name = name or data.tags.get("mlflow.runName")
            info = RunInfo(run_uuid, str(experiment_id), user_id, status, start, end, stage, artifact_uri, name)
            runs.append(Run(info, data))
        return SearchUtils.sort(SearchUtils.filter(runs, filter_string), list(order_by))
