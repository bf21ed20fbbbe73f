"""The MLflow look-ups that several parts share: tag names, experiment ids, FINISHED-run searches.

Neither torch nor (until a search runs) MLflow is imported, so the report and the sweep skip check stay light.
Every search adds ``attributes.status = 'FINISHED'`` itself; a filter MLflow cannot parse becomes a
:class:`~transfuse.errors.TransfuseError` of the caller's kind, with MLflow's first line only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transfuse.errors import TransfuseError
from transfuse.tracking.tags import HASH_TAG, SOURCE_RUN_TAG, SOURCE_TAG, SWEEPS_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["HASH_TAG", "SOURCE_RUN_TAG", "SOURCE_TAG", "SWEEPS_TAG", "experiment_ids", "finished_runs", "quoted"]

FINISHED = "attributes.status = 'FINISHED'"
#: the most runs one search returns (MLflow's own limit per page is 50,000)
MAX_RESULTS = 50000
#: a search of a database store that may return this many runs or more (a report) reads them in bulk
#: (:mod:`transfuse.tracking.bulk`); one for a single run (the sweep skip check, ``init.weights``) asks MLflow
BULK_FROM = 1000


def experiment_ids(
    client: MlflowClient, names: Sequence[str] = (), error: type[TransfuseError] = TransfuseError
) -> list[str]:
    """Ids of the named experiments, or of every active one when none is named.

    Raises:
        error: an experiment of that name does not exist (the message lists those that do).
    """
    if not names:
        return [experiment.experiment_id for experiment in _all_experiments(client)]
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in _all_experiments(client))) or "none"
            raise error(f"no experiment named {name!r} in {client.tracking_uri} (experiments: {known})")
        ids.append(experiment.experiment_id)
    return ids


def _all_experiments(client: MlflowClient) -> list:
    experiments, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        experiments += list(page)
        token = page.token
        if not token:
            return experiments


def finished_runs(
    client: MlflowClient,
    ids: Sequence[str],
    filter_string: str = "",
    order_by: Sequence[str] = ("attributes.start_time DESC",),
    max_results: int = MAX_RESULTS,
    error: type[TransfuseError] = TransfuseError,
    what: str = "filter",
) -> list[Run]:
    """FINISHED runs of the experiments ``ids`` that match ``filter_string`` (newest first by default).

    Raises:
        error: MLflow cannot parse the filter; the message quotes the user's filter, not the clause added here.
    """
    from mlflow.exceptions import MlflowException

    from transfuse.tracking import bulk

    if not ids:
        return []
    query = " and ".join(q for q in (filter_string.strip(), FINISHED) if q)
    try:
        if max_results >= BULK_FROM:
            return bulk.search_runs(client, ids, query, order_by, max_results)
        return list(client.search_runs(list(ids), query, order_by=list(order_by), max_results=max_results))
    except MlflowException as err:
        first = str(err.message).strip().splitlines()[0] if str(err.message).strip() else "cannot be parsed"
        first = first.replace(f" and {FINISHED}", "")
        raise error(f"invalid {what} {filter_string!r}: {first}") from None


def newest_finished(
    client: MlflowClient,
    filter_string: str,
    ids: Sequence[str] | None = None,
    error: type[TransfuseError] = TransfuseError,
    what: str = "filter",
) -> Run | None:
    """The newest FINISHED run matching ``filter_string`` in ``ids`` (every active experiment when None)."""
    ids = experiment_ids(client) if ids is None else ids
    runs = finished_runs(client, ids, filter_string, max_results=1, error=error, what=what)
    return runs[0] if runs else None


def quoted(value: str, error: type[TransfuseError] = TransfuseError) -> str:
    """A string literal for an MLflow filter (which has no escape sequences, only two kinds of quotes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise error(f"{value!r} holds both kinds of quotes; MLflow cannot filter on it")
