"""What a store holds, for people: its experiments with their runs per status, its runs newest first, and the
"newest runs" hint that a "not found" error gives.

``transfuse-runs experiments`` and ``transfuse-runs list`` print these; ``transfuse-report --list`` and the
``runs:/<id>`` error reuse them, so every place that says "not found" also says what is there. Only MLflow is
imported (when a store is read), never torch.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transfuse.errors import StoreError, TransfuseError
from transfuse.tracking.query import _all_experiments, experiment_ids
from transfuse.tracking.tags import SOURCE_RUN_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

#: run statuses in the order the listings show them
STATUSES = ("FINISHED", "RUNNING", "FAILED", "KILLED", "SCHEDULED")
#: how many characters of a run id a listing shows (enough to tell runs apart, and to paste into a filter's LIKE)
SHORT_ID = 8
#: the command a "not found" error points to for more
LIST_HINT = "transfuse-runs list"


def check_store_exists(
    tracking_uri: str,
    error: type[TransfuseError] = StoreError,
    why: str = "this command only reads a store and does not create one",
) -> None:
    """Refuse a ``sqlite:`` store whose file does not exist: MLflow would create an empty database there, and a
    mistyped path would only show up as a missing experiment.

    Raises:
        error: the URI cannot be parsed, or names a file that does not exist (the message names the path).
    """
    if not tracking_uri.startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url  # MLflow's own dependency; parses the URI as MLflow will
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(tracking_uri).database
    except ArgumentError:
        raise error(
            f"cannot parse the tracking URI {tracking_uri!r}: a SQLite store is sqlite:///<relative path> or "
            "sqlite:////<absolute path>"
        ) from None
    path = Path(database).expanduser().absolute() if database and database != ":memory:" else None
    if path is not None and not path.is_file():
        raise error(f"no MLflow store at {path} (from {tracking_uri}); check --tracking-uri: {why}")


@dataclass(frozen=True)
class ExperimentSummary:
    """An active experiment and how many of its runs have each status; ``newest`` is the start of its newest run
    (milliseconds since the epoch, None without runs)."""

    name: str
    statuses: Counter[str]
    newest: int | None

    @property
    def runs(self) -> int:
        return sum(self.statuses.values())


def experiments(client: MlflowClient) -> list[ExperimentSummary]:
    """Every active experiment of the store, by name, with its runs counted per status."""
    from transfuse.tracking.query import MAX_RESULTS

    found = []
    for experiment in sorted(_all_experiments(client), key=lambda e: e.name):
        statuses: Counter[str] = Counter()
        starts: list[int] = []
        token = None
        while True:  # MLflow has no count query: read the runs, page by page
            page = client.search_runs([experiment.experiment_id], max_results=MAX_RESULTS, page_token=token)
            statuses.update(run.info.status for run in page)
            starts += [run.info.start_time for run in page if run.info.start_time]
            token = page.token
            if not token:
                break
        found.append(ExperimentSummary(experiment.name, statuses, max(starts, default=None)))
    return found


def _when(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M")


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows aligned under a header, two spaces apart; columns in ``right`` (numbers) aligned right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(cells)).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def format_experiments(summaries: Sequence[ExperimentSummary]) -> str:
    """A table: each experiment, its runs in all and per status (only statuses some run has), its newest run.

    >>> print(format_experiments([ExperimentSummary("study", Counter(FINISHED=3, FAILED=1), None)]))
    experiment  runs  FINISHED  FAILED  newest run
    study          4         3       1  -
    """
    if not summaries:
        return "no experiment"
    shown = [s for s in STATUSES if any(e.statuses[s] for e in summaries)]
    shown += sorted({s for e in summaries for s in e.statuses} - set(shown))
    header = ["experiment", "runs", *shown, "newest run"]
    rows = [[e.name, str(e.runs), *(str(e.statuses[s]) for s in shown), _when(e.newest)] for e in summaries]
    return _columns(header, rows, right=range(1, len(shown) + 2))


def list_runs(
    client: MlflowClient,
    names: Sequence[str] = (),
    filter_string: str = "",
    status: str | None = None,
    limit: int = 20,
    error: type[TransfuseError] = TransfuseError,
) -> list[Run]:
    """The newest ``limit`` runs of the named experiments (every active one when none is named) that match an
    MLflow filter and, if given, have ``status``.

    Raises:
        error: an experiment does not exist (the message lists those that do), or MLflow cannot parse the filter.
    """
    from mlflow.exceptions import MlflowException

    ids = experiment_ids(client, names, error=error)
    if not ids:
        return []
    clause = f"attributes.status = '{status}'" if status else ""
    query = " and ".join(q for q in (filter_string.strip(), clause) if q)
    try:
        return list(client.search_runs(ids, query, order_by=["attributes.start_time DESC"], max_results=limit))
    except MlflowException as err:
        first = str(err.message).strip().splitlines()[0] if str(err.message).strip() else "cannot be parsed"
        raise error(f"invalid filter {filter_string!r}: {first.replace(f' and {clause}', '')}") from None


def data_of(run: Run) -> str:
    """The data a run trained and tested on: ``tags.data``, as ``source->target`` for an adaptation run."""
    tags = run.data.tags
    data, target = tags.get("data", ""), tags.get("target_data")
    return f"{data}->{target}" if target else data


def method_of(run: Run) -> str:
    """What a run did within its stage: ``tags.method``, else its adaptation or fine-tuning strategy."""
    tags = run.data.tags
    if tags.get("method"):
        return tags["method"]
    stage = tags.get("stage", "")  # ``tags.adapt`` / ``tags.finetune``: every train run has a finetune choice
    return tags.get(stage, "") if stage in ("adapt", "finetune") else ""


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"


def format_runs(runs: Sequence[Run], metric: str, experiment_names: dict[str, str] | None = None) -> str:
    """A table of runs as given (newest first): short id, name, stage, data, method, status, ``metric`` and the
    short id of the run it started from; with ``experiment_names`` (id -> name), an experiment column too."""
    if not runs:
        return "no run"
    header = ["run", *(["experiment"] if experiment_names else []), "name", "stage", "data", "method", "status"]
    header += [metric, "source run"]
    rows = []
    for run in runs:
        tags = run.data.tags
        where = [experiment_names.get(run.info.experiment_id, run.info.experiment_id)] if experiment_names else []
        rows.append(
            [
                run.info.run_id[:SHORT_ID],
                *where,
                run.info.run_name or "",
                tags.get("stage", ""),
                data_of(run),
                method_of(run),
                run.info.status,
                _value(run.data.metrics.get(metric)),
                tags.get(SOURCE_RUN_TAG, "")[:SHORT_ID] or "-",
            ]
        )
    return _columns(header, rows, right=[len(header) - 2])


def experiment_names(client: MlflowClient) -> dict[str, str]:
    """Experiment id -> name, for every active experiment."""
    return {e.experiment_id: e.name for e in _all_experiments(client)}


def newest_runs_hint(client: MlflowClient, shown: int = 3) -> str:
    """What a "no such run" error adds: the newest runs of the store (full ids, names) and where to see more."""
    ids = experiment_ids(client)
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=shown) if ids else []
    if not runs:
        return "the store holds no run yet"
    named = ", ".join(f"{r.info.run_id} ({r.info.run_name})" for r in runs)
    return f"newest runs: {named}; `{LIST_HINT}` shows more"
