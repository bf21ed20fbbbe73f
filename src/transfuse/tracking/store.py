"""Opening an MLflow store: one process at a time creates a SQLite database, artifacts live beside it.

Only ``mlflow`` and ``filelock`` are imported (no torch).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient

from transfuse.errors import StoreError

#: how long a tracking server may take to answer before a command gives up with one line
REACH_WITHIN_S = 10.0


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an inter-process lock on a SQLite store (``<db>.lock``); a no-op for a tracking server.

    SQLite serialises writes by itself (MLflow waits up to 20 s for a busy database), but creating the schema
    and creating an experiment are check-then-write sequences that parallel jobs would race on.
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock", timeout=600):
        yield


def check_reachable(tracking_uri: str, within_s: float = REACH_WITHIN_S) -> None:
    """Fail fast, with one line, when a tracking server does not answer: MLflow itself would retry for minutes
    in silence. Other stores (SQLite, files) are not probed.

    Raises:
        StoreError: ``/health`` of the server gave no answer within ``within_s`` seconds.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    deadline, reason = time.monotonic() + within_s, ""
    while True:
        try:
            answer = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=5)
            if answer.status_code < 500:
                return
            reason = f"HTTP {answer.status_code}"
        except requests.RequestException as err:
            reason = type(err).__name__
        if time.monotonic() + 2 > deadline:
            raise StoreError(
                f"tracking server {tracking_uri} is unreachable ({reason}) after {within_s:.0f} s; start it, or set "
                "logger.tracking_uri (e.g. sqlite:///mlflow.db for a local store)"
            )
        time.sleep(2)


def open_store(tracking_uri: str) -> MlflowClient:
    """A client whose store exists: a new SQLite database is created (and migrated) by one process at a time,
    and a database store gets :func:`add_value_indexes`. (The entry points first :func:`check_reachable` a
    tracking server, so that one that is down fails fast.)"""
    with store_lock(tracking_uri):  # MlflowClient creates and migrates the schema when it is constructed
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
        add_value_indexes(tracking_uri)
    return client


#: the indexes :func:`add_value_indexes` adds: name -> MLflow table
VALUE_INDEXES = {"transfuse_tags_value": "tags", "transfuse_params_value": "params"}


def add_value_indexes(tracking_uri: str) -> None:
    """Index the values of tags and params in a SQLite or PostgreSQL store, if not done yet.

    MLflow indexes them by key and run only, so a search for one value (the sweep skip check's
    ``tags.config_hash = '...'``, an ``init.weights`` query) reads that key's value for every run in the store,
    and grows with it (``scripts/bench_store.py``). SQLite gets a B-tree on (key, value); PostgreSQL a hash index
    on the value, because its B-tree refuses a value over 2.7 kB, and MLflow keeps up to 6,000 characters. Other
    stores (a tracking server, MySQL) are left alone: a server's database is indexed by whoever runs it, with the
    statements of :func:`value_index_statements`.
    """
    statements = value_index_statements(tracking_uri)
    if not statements:
        return
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(tracking_uri, poolclass=NullPool)
    try:
        inspector = inspect(engine)
        missing = [
            statement
            for (name, table), statement in zip(VALUE_INDEXES.items(), statements, strict=True)
            if name not in {index["name"] for index in inspector.get_indexes(table)}
        ]
        if missing:  # checked first: CREATE INDEX IF NOT EXISTS would take SQLite's write lock every time
            with engine.begin() as connection:
                for statement in missing:
                    connection.execute(text(statement))
    finally:
        engine.dispose()


def value_index_statements(tracking_uri: str) -> list[str]:
    """The ``CREATE INDEX`` statements of :func:`add_value_indexes` for this store's database (none for others).

    >>> value_index_statements("sqlite:///mlflow.db")[0]
    'CREATE INDEX IF NOT EXISTS transfuse_tags_value ON tags (key, value)'
    """
    dialect = tracking_uri.partition(":")[0].partition("+")[0]
    if dialect == "sqlite":
        return [f"CREATE INDEX IF NOT EXISTS {name} ON {table} (key, value)" for name, table in VALUE_INDEXES.items()]
    if dialect == "postgresql":
        return [
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING hash (value)" for name, table in VALUE_INDEXES.items()
        ]
    return []


def artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """For a SQLite store, keep artifacts in ``mlartifacts/`` beside the database file.

    MLflow would otherwise put them in ``./mlruns`` of whatever directory the command ran in.
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name)
    return (database.parent / "mlartifacts" / slug).as_uri()
