"""A results table as data: groups of runs, their mean ± error, and the layout every renderer draws from.

Kept apart from the renderers so that Markdown, CSV, LaTeX and the figures show the very same numbers, and
apart from the MLflow query so that it can be built from any runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transfuse.errors import ReportError
from transfuse.report.checks import (
    MixedData,
    MixedEnvironment,
    MixedRecipes,
    differing_keys,
    mixed_environment,
    recipes,
    tested_on,
)
from transfuse.report.query import CHECKPOINTS, check_keys
from transfuse.report.query import field as run_field

if TYPE_CHECKING:
    from mlflow.entities import Run

#: what the ± of a cell is, as the caption states it
ERRORS = {"std": "sample standard deviation (n - 1)", "sem": "standard error of the mean"}


@dataclass
class Group:
    """One row of a results table: the runs sharing the same values of the grouping keys, and their metric
    ``values`` (``runs``, in the same order, let a table check that they are comparable)."""

    key: tuple[str, ...]
    values: list[float]
    runs: list[Run] = field(default_factory=list, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); NaN for a single run."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan


def _natural(value: str) -> tuple[int, float | str]:
    """Sort key putting numbers in numeric order (1, 5, 10, 50) before other strings."""
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def summarise(runs: Sequence[Run], rows: Sequence[str], metric: str, order: Sequence[str] = ()) -> list[Group]:
    """Group runs by ``rows`` and collect ``metric``; runs without the metric are left out.

    Raises:
        ReportError: a key of ``rows`` that none of the runs has (a typo, rather than a group of ``None``).
    """
    check_keys(runs, rows)
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        value = run.data.metrics.get(metric)
        if value is not None:
            key = tuple(str(run_field(run, k)) for k in rows)
            group = groups.setdefault(key, Group(key, []))
            group.values.append(value)
            group.runs.append(run)
    return sorted(groups.values(), key=lambda group: row_position(group.key, order))


def row_position(key: tuple[str, ...], order: Sequence[str] = ()) -> tuple:
    """Where a row goes: the first key's value by ``order`` (unlisted values after), then every value in natural
    order (``2`` before ``10``)."""
    rank = {name: i for i, name in enumerate(order)}
    return (rank.get(key[0], len(rank)), *(_natural(v) for v in key))


@dataclass(frozen=True)
class Cell:
    """One metric of one group; ``group`` is None where no run has it, ``best`` marks the column's best mean,
    ``mixed`` a group whose runs differ in more than the seed."""

    metric: str
    group: Group | None
    best: bool = False
    mixed: bool = False

    def error(self, kind: str) -> float:
        """The ± shown (``std`` or ``sem``); NaN for an empty cell or a single run."""
        if self.group is None:
            return math.nan
        return self.group.std if kind == "std" else self.group.sem


@dataclass(frozen=True)
class Row:
    """The values of the row keys and one cell per value column; ``n`` is the runs of the first metric the row has
    (of every cell, pivoted), shown in the ``n`` column of a table that is not pivoted."""

    key: tuple[str, ...]
    cells: tuple[Cell, ...]
    n: int


@dataclass(frozen=True)
class Table:
    """A results table as data, rendered by :mod:`transfuse.report.render`.

    ``column_keys`` are the grouping keys pivoted into columns (their values head the value columns, and n per
    cell is in the caption); without them the table has an ``n`` column. ``error`` and ``checkpoint`` are the
    keys of :data:`ERRORS` and :data:`~transfuse.report.query.CHECKPOINTS` that the caption spells out.
    ``problems`` are the cells that mix recipes and the columns that mix test data; each is a note below the
    caption, and ``--strict`` refuses the table.
    """

    row_keys: tuple[str, ...]
    column_keys: tuple[str, ...]
    header: tuple[str, ...]
    rows: tuple[Row, ...]
    error: str
    checkpoint: str
    caption: str
    problems: tuple[MixedRecipes | MixedData | MixedEnvironment, ...] = ()

    @property
    def notes(self) -> list[str]:
        """What the caption adds about the problems, one line each."""
        return [problem.note() for problem in self.problems]


def _flagged(metric: str, group: Group | None, best: float, mixed: set[int]) -> Cell:
    return Cell(metric, group, group is not None and group.mean == best, group is not None and id(group) in mixed)


def _mixed_recipes(cells: Mapping[str, Group]) -> dict[int, MixedRecipes]:
    """The cells (label -> group) whose runs come from more than one recipe, by ``id`` of their group."""
    found = {}
    for label, group in cells.items():
        groups = recipes(group.runs)
        if len(groups) > 1:
            found[id(group)] = MixedRecipes(label, len(groups), differing_keys(groups))
    return found


def _mixed_data(column: str, metric: str, cells: Mapping[str, Group | None]) -> MixedData | None:
    """The column (its row label -> group) if its rows were tested on more than one dataset."""
    rows: dict[str, list[str]] = {}
    for label, group in cells.items():
        tested = {tested_on(run, metric) for run in group.runs} if group else set()
        for data in sorted(tested - {None}):  # None: a run without data tags, or a metric of no data
            rows.setdefault(data, []).append(label)
    return MixedData(column, rows) if len(rows) > 1 else None


def build_table(
    tables: Mapping[str, Sequence[Group]],
    rows: Sequence[str],
    columns: Sequence[str] = (),
    lower: Sequence[str] = (),
    error: str = "std",
    checkpoint: str = "best",
    order: Sequence[str] = (),
) -> Table:
    """Lay out the groups of each metric (as from :func:`summarise` over ``rows + columns``) as one table.

    Several metrics become the value columns, one row per group, with the n of the first metric. One metric with
    ``columns`` is pivoted: one row per value of the row keys and one column per value of the column keys
    (``rows=method, columns=pair`` gives one row per method and one column per pair). The best mean of each
    column is flagged, the smallest for metrics in ``lower``, unless its rows were tested on different data. Cells
    whose runs differ in more than the seed are marked; both problems are spelled out below the caption. Rows
    follow ``order`` as :func:`summarise` sorts them, each once however many metrics it has.

    Raises:
        ReportError: several metrics with ``columns``, or no row key.
    """
    if error not in ERRORS:
        raise ValueError(f"error must be one of {list(ERRORS)}, got {error!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    names = list(tables)
    if columns and len(names) > 1:
        raise ReportError("several metrics become columns themselves; they cannot also be pivoted by keys")
    if not rows:
        raise ReportError("a table needs at least one row key")
    pick = {name: min if name in lower else max for name in names}
    if columns:
        metric, split = names[0], len(rows)
        groups = tables[metric]
        row_values = list(dict.fromkeys(g.key[:split] for g in groups))
        col_values = sorted({g.key[split:] for g in groups}, key=lambda key: [_natural(v) for v in key])
        cells = {(g.key[:split], g.key[split:]): g for g in groups}
        header = tuple(" / ".join(c) for c in col_values)
        mixed = _mixed_recipes({f"{' / '.join(r)} [{' / '.join(c)}]": g for (r, c), g in cells.items()})
        data = {}
        for c, name in zip(col_values, header, strict=True):
            column = {" / ".join(r): cells.get((r, c)) for r in row_values}
            data[c] = _mixed_data(f"{', '.join(columns)} = {name}", metric, column)
        best = {
            c: math.nan if data[c] else pick[metric](g.mean for (_, gc), g in cells.items() if gc == c)
            for c in col_values
        }
        body, marked = [], set(mixed)
        for r in row_values:
            line = tuple(_flagged(metric, cells.get((r, c)), best[c], marked) for c in col_values)
            body.append(Row(r, line, sum(c.group.n for c in line if c.group)))
        what = f"{metric} (mean ± {error})"
    else:
        by_key = {name: {g.key: g for g in groups} for name, groups in tables.items()}
        # every row any metric has, once, in the order summarise gives each metric's rows
        keys = sorted({k for n in names for k in by_key[n]}, key=lambda k: row_position(k, order))
        mixed = {}
        for n in names:
            mixed |= _mixed_recipes({" / ".join(g.key): g for g in tables[n]})
        data = {n: _mixed_data(n, n, {" / ".join(k): by_key[n].get(k) for k in keys}) for n in names}
        best = {n: math.nan if data[n] else pick[n]((g.mean for g in tables[n]), default=math.nan) for n in names}
        header = tuple(f"{n} (mean ± {error})" for n in names)
        body, marked = [], set(mixed)
        for key in keys:
            line = tuple(_flagged(n, by_key[n].get(key), best[n], marked) for n in names)
            counted = next((c.group.n for c in line if c.group), 0)  # the first metric the row has
            body.append(Row(key, line, counted))
        what = f"{names[0]} (mean ± {error})" if len(names) == 1 else f"mean ± {error}"
    counts = sorted({c.group.n for row in body for c in row.cells if c.group})
    n = "0" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    parts = [f"{what}, n = {n} runs per cell", *([f"columns: {', '.join(columns)}"] if columns else [])]
    caption = "; ".join([*parts, f"± = {ERRORS[error]}", f"checkpoint: {CHECKPOINTS[checkpoint]}"])
    notes = {p.note(): p for p in mixed.values()}  # a row mixed in several metrics is noted once
    notes |= {p.note(): p for p in data.values() if p is not None}
    everyone = list({id(run): run for groups in tables.values() for g in groups for run in g.runs}.values())
    if (setup := mixed_environment(everyone)) is not None:
        notes[setup.note()] = setup
    return Table(tuple(rows), tuple(columns), header, tuple(body), error, checkpoint, caption, tuple(notes.values()))
