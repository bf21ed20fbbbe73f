"""Selecting the runs of a report and reading its grouping keys off them.

Experiment ids, FINISHED-run searches and the ``sweeps`` tag come from :mod:`transfuse.tracking.query`, shared
with the sweep skip check, so a report selects runs by the same rules that recorded them. MLflow is imported
only when runs are searched (and torch never), so ``transfuse-report --help`` answers at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from transfuse.errors import ReportError
from transfuse.tracking.query import SWEEPS_TAG, experiment_ids, finished_runs, quoted

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

#: the store read when neither ``--tracking-uri`` nor ``MLFLOW_TRACKING_URI`` names one
DEFAULT_URI = "sqlite:///mlflow.db"
#: checkpoint rules: which weights a ``test/*`` metric was measured on, as the caption states it
CHECKPOINTS = {"best": "best validation", "last": "last epoch"}
#: what ``attributes.<name>`` can read (the properties of an MLflow ``RunInfo``)
ATTRIBUTES = (
    "run_id",
    "run_name",
    "experiment_id",
    "status",
    "start_time",
    "end_time",
    "user_id",
    "artifact_uri",
    "lifecycle_stage",
)


def field(run: Run, key: str) -> str | float | None:
    """``tags.x``, ``params.x``, ``metrics.x`` or ``attributes.x`` of a run; None where the run lacks it.

    Raises:
        ReportError: the key has none of those prefixes.
    """
    kind, _, name = key.partition(".")
    source = {"tags": run.data.tags, "params": run.data.params, "metrics": run.data.metrics}.get(kind)
    if source is not None:
        return source.get(name)
    if kind == "attributes":
        return getattr(run.info, name, None)
    raise ReportError(f"{key!r}: a key starts with tags., params., metrics. or attributes.")


def check_keys(runs: Sequence[Run], keys: Sequence[str], shown: int = 8) -> None:
    """Fail on a key that none of ``runs`` has, since a typo would otherwise group every run under ``None``.

    Raises:
        ReportError: naming the key and up to ``shown`` keys of that kind the runs do have, closest first.
    """
    for key in keys:
        if not runs or any(field(run, key) is not None for run in runs):
            continue
        kind, _, name = key.partition(".")
        if kind == "attributes":
            names = list(ATTRIBUTES)
        else:  # MLflow's own tags (mlflow.user, mlflow.source.name...) would crowd out the config keys
            names = sorted({n for run in runs for n in getattr(run.data, kind) if not n.startswith("mlflow.")})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        ordered = [*close, *(n for n in names if n not in close)]
        known = ", ".join(f"{kind}.{n}" for n in ordered[:shown]) or "none"
        more = f", ... ({len(ordered)} in all)" if len(ordered) > shown else ""
        raise ReportError(f"no selected run has {key!r} ({kind} of the selected runs: {known}{more})")


def checkpoint_metric(metric: str, checkpoint: str) -> str:
    """The metric key holding ``metric`` under a checkpoint rule.

    Training tests the best-validation checkpoint as ``test/<name>`` and the last-epoch weights as
    ``test_last/<name>``; metrics outside ``test/`` do not depend on the rule.

    >>> checkpoint_metric("test/acc", "last"), checkpoint_metric("cost/params", "last")
    ('test_last/acc', 'cost/params')
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    split, _, rest = metric.partition("/")
    if checkpoint == "last" and split in ("test", "test_source") and rest:
        return f"{split.replace('test', 'test_last', 1)}/{rest}"
    return metric


def check_store(tracking_uri: str) -> None:
    """Refuse a ``sqlite:`` store whose file does not exist: MLflow would create an empty database there, and the
    report of a mistyped path would only say that the experiment is missing.

    Raises:
        ReportError: naming the path the URI points to.
    """
    if not tracking_uri.startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url  # MLflow's own dependency; parses the URI as MLflow will
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(tracking_uri).database
    except ArgumentError:
        raise ReportError(
            f"cannot parse the tracking URI {tracking_uri!r}: a SQLite store is sqlite:///<relative path> or "
            "sqlite:////<absolute path>"
        ) from None
    path = Path(database).expanduser().absolute() if database and database != ":memory:" else None
    if path is not None and not path.is_file():
        raise ReportError(
            f"no MLflow store at {path} (from {tracking_uri}); check --tracking-uri: a report only reads a store "
            "and does not create one"
        )


def fetch_runs(
    client: MlflowClient, experiments: Sequence[str], filter_string: str = "", sweeps: Sequence[str] = ()
) -> list[Run]:
    """FINISHED runs of the named experiments (every active one when none is named) that match an MLflow filter
    and, when ``sweeps`` are given, that one of those Hydra sweeps ran or reused (their ``sweeps`` tag).

    Raises:
        ReportError: an experiment does not exist (the message lists those that do), or MLflow cannot parse the
            filter.
    """
    ids = experiment_ids(client, experiments, error=ReportError)
    if not sweeps:
        return finished_runs(client, ids, filter_string, error=ReportError)
    if filter_string.strip():  # parsed alone first, so that an error quotes the user's filter, not the LIKE added
        finished_runs(client, ids, filter_string, max_results=1, error=ReportError)
    runs: dict[str, Run] = {}
    for sweep in sweeps:
        # LIKE narrows the search inside the store, but an id can be a substring of another
        # (``.../07-01-0`` of ``.../07-01-02``), so the space-separated list is checked exactly afterwards
        like = f"tags.{SWEEPS_TAG} LIKE {quoted(f'%{sweep}%', error=ReportError)}"
        query = " and ".join(q for q in (filter_string.strip(), like) if q)
        for run in finished_runs(client, ids, query, error=ReportError):
            if sweep in run.data.tags.get(SWEEPS_TAG, "").split():
                runs.setdefault(run.info.run_id, run)
    return list(runs.values())
