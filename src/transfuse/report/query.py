"""Selecting the runs of a report and reading its grouping keys off them.

Experiment ids, FINISHED-run searches and the ``sweeps`` tag come from :mod:`transfuse.tracking.query`, shared
with the sweep skip check, so a report selects runs by the same rules that recorded them. MLflow is imported
only when runs are searched (and torch never), so ``transfuse-report --help`` answers at once.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from transfuse.errors import ReportError
from transfuse.tracking.listing import check_store_exists
from transfuse.tracking.query import MAX_RESULTS, SWEEPS_TAG, experiment_ids, finished_runs, quoted

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
        raise ReportError(f"no selected run has {key!r} ({kind} of the selected runs: {closest(name, names, kind)})")


def closest(name: str, names: Sequence[str], prefix: str = "", shown: int = 8) -> str:
    """Up to ``shown`` of ``names`` (each as ``prefix.name``), the three closest to ``name`` first, for an error
    that says what exists.

    >>> closest("test/ac", ["val/acc", "test/acc", "cost/params"])
    'test/acc, val/acc, cost/params'
    """
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    ordered = [*close, *(n for n in names if n not in close)]
    known = ", ".join(f"{prefix}.{n}" if prefix else n for n in ordered[:shown]) or "none"
    return known + (f", ... ({len(ordered)} in all)" if len(ordered) > shown else "")


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
    check_store_exists(tracking_uri, ReportError, "a report only reads a store and does not create one")


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


def _where(experiments: Sequence[str], filter_string: str) -> str:
    named = f" in {', '.join(map(repr, experiments))}" if experiments else ""
    return named + (" with that --filter" if filter_string.strip() else "")


def sweep_statuses(client: MlflowClient, ids: Sequence[str], sweep: str) -> Counter[str]:
    """How many runs of the experiments ``ids``, of any status, the Hydra sweep ``sweep`` ran or reused."""
    like = f"tags.{SWEEPS_TAG} LIKE {quoted(f'%{sweep}%', error=ReportError)}"
    runs = client.search_runs(list(ids), like, max_results=MAX_RESULTS) if ids else []
    return Counter(r.info.status for r in runs if sweep in r.data.tags.get(SWEEPS_TAG, "").split())


def newest_sweeps(client: MlflowClient, ids: Sequence[str], shown: int = 5) -> list[str]:
    """The ids of the sweeps that ran the newest runs of the experiments ``ids`` (a reuse counts as the later)."""
    order = ["attributes.start_time DESC"]
    runs = client.search_runs(list(ids), f"tags.{SWEEPS_TAG} LIKE '%'", order_by=order, max_results=500) if ids else []
    found = dict.fromkeys(sweep for run in runs for sweep in reversed(run.data.tags[SWEEPS_TAG].split()))
    return list(found)[:shown]


def empty_selection(
    client: MlflowClient, experiments: Sequence[str], filter_string: str = "", sweeps: Sequence[str] = ()
) -> str:
    """Why a selection holds no FINISHED run, for the error that says so: no run carries the sweep (and which
    sweeps the newest runs carry), or its runs did not finish or do not match the filter."""
    ids = experiment_ids(client, experiments, error=ReportError)
    where = _where(experiments, "")
    if not sweeps:
        return f"no FINISHED run{_where(experiments, filter_string)}; `transfuse-runs list` shows runs of any status"
    named = " ".join(sweeps)
    statuses = sum((sweep_statuses(client, ids, sweep) for sweep in sweeps), Counter())
    if not statuses:
        newest = newest_sweeps(client, ids)
        known = f"newest sweeps: {', '.join(newest)}" if newest else "no run carries a sweep id"
        return f"no run{where} carries --sweep {named} ({known})"
    ran = f"--sweep {named} ran {statuses.total()} run(s){where} ("
    ran += ", ".join(f"{n} {status}" for status, n in statuses.most_common()) + ")"
    if statuses["FINISHED"] and filter_string.strip():
        return f"{ran}, but no FINISHED one matches that --filter"
    return f"{ran}, none FINISHED"


def missing_metric(runs: Sequence[Run], metric: str, sweeps: Sequence[str] = ()) -> str:
    """The error for selected runs none of which has ``metric``: the metrics they have, closest first."""
    of = f" of --sweep {' '.join(sweeps)}" if sweeps else ""
    last = " (--checkpoint last reads test/x as test_last/x)" if metric.startswith("test_last/") else ""
    names = sorted({name for run in runs for name in run.data.metrics})
    return f"no FINISHED run{of} with metric {metric!r} matches{last} (metrics they have: {closest(metric, names)})"
