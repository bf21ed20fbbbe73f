"""``transfuse-report``: a results table read back from MLflow, mean ± standard deviation over seeds.

The table groups runs by config keys (``tags.method``, ``params.data.train_per_class``...) and aggregates one
metric; it is what study READMEs show, so the numbers there come from the tracking store, not from logs.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

DEFAULT_URI = "sqlite:///mlflow.db"


@dataclass
class Group:
    """One row of a results table: the runs sharing the same values of the grouping keys."""

    key: tuple[str, ...]
    values: list[float]

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


def field(run: Run, key: str) -> str | float | None:
    """``tags.x``, ``params.x``, ``metrics.x`` or ``attributes.x`` of a run."""
    kind, _, name = key.partition(".")
    source = {"tags": run.data.tags, "params": run.data.params, "metrics": run.data.metrics}.get(kind)
    if source is not None:
        return source.get(name)
    if kind == "attributes":
        return getattr(run.info, name, None)
    raise ValueError(f"{key!r}: a key starts with tags., params., metrics. or attributes.")


def fetch_runs(client: MlflowClient, experiments: Sequence[str], filter_string: str = "") -> list[Run]:
    """FINISHED runs of the named experiments that match an MLflow filter."""
    ids = []
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise SystemExit(f"transfuse-report: error: no experiment named {name!r} in {client.tracking_uri}")
        ids.append(experiment.experiment_id)
    query = " and ".join(q for q in (filter_string, "attributes.status = 'FINISHED'") if q)
    return client.search_runs(ids, query, max_results=50000)


def summarise(runs: Sequence[Run], rows: Sequence[str], metric: str, order: Sequence[str] = ()) -> list[Group]:
    """Group runs by ``rows`` and collect ``metric``; runs without the metric are left out."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for run in runs:
        value = run.data.metrics.get(metric)
        if value is not None:
            groups.setdefault(tuple(str(field(run, k)) for k in rows), []).append(value)
    rank = {name: i for i, name in enumerate(order)}

    def natural(value: str) -> tuple[int, float | str]:  # numbers in numeric order (1, 5, 10, 50)
        try:
            return (0, float(value))
        except ValueError:
            return (1, value)

    def position(group: Group) -> tuple:
        return (rank.get(group.key[0], len(rank)), *(natural(v) for v in group.key))

    return sorted((Group(k, v) for k, v in groups.items()), key=position)


def _cell(group: Group | None, error: str, best: float) -> str:
    if group is None:
        return "n/a"
    spread = group.std if error == "std" else group.sem
    cell = f"{_number(group.mean)} ± {_number(spread)}" if group.n > 1 else _number(group.mean)
    return f"**{cell}**" if group.mean == best else cell


def _number(value: float) -> str:
    """Four decimals for scores; large counts (parameters) as grouped integers."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"


def markdown(
    groups: Sequence[Group],
    rows: Sequence[str],
    metric: str,
    lower_is_better: bool = False,
    columns: int = 0,
    error: str = "std",
) -> str:
    """A Markdown table of mean ± ``error`` (``std``: sample standard deviation over runs, ``sem``: standard
    error of the mean) with n; the best mean of each column in bold.

    The last ``columns`` grouping keys are pivoted into columns (``columns=1`` with rows ``method,pair``
    gives one row per method and one column per pair); otherwise each group is a row with an ``n`` column.
    """
    if error not in ("std", "sem"):
        raise ValueError(f"error must be std or sem, got {error!r}")
    pick = min if lower_is_better else max
    label = f"{metric} (mean ± {error})"
    if columns == 0:
        best = pick((g.mean for g in groups), default=math.nan)
        lines = [f"| {' | '.join(rows)} | {label} | n |", "|" + "---|" * (len(rows) + 2)]
        lines += [f"| {' | '.join(g.key)} | {_cell(g, error, best)} | {g.n} |" for g in groups]
        return "\n".join(lines)
    split = len(rows) - columns
    if split < 1:
        raise ValueError(f"{columns} column keys leave no row key among {list(rows)}")
    row_keys = list(dict.fromkeys(g.key[:split] for g in groups))
    col_keys = list(dict.fromkeys(g.key[split:] for g in groups))
    cells = {(g.key[:split], g.key[split:]): g for g in groups}
    best = {c: pick(g.mean for (_, gc), g in cells.items() if gc == c) for c in col_keys}
    counts = sorted({g.n for g in groups})
    header = [*rows[:split], *(" / ".join(c) for c in col_keys)]
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for r in row_keys:
        lines.append(f"| {' | '.join([*r, *(_cell(cells.get((r, c)), error, best[c]) for c in col_keys)])} |")
    n = counts[0] if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    lines.append(f"\n{label}, n = {n} runs per cell; columns: {', '.join(rows[split:])}")
    return "\n".join(lines)


def metrics_markdown(
    tables: Mapping[str, Sequence[Group]], rows: Sequence[str], lower: Sequence[str] = (), error: str = "std"
) -> str:
    """One row per group, one column per metric (mean ± ``error``), n of the first metric; the best mean of
    each column in bold, the smallest for metrics named in ``lower``."""
    names = list(tables)
    cells = {name: {g.key: g for g in groups} for name, groups in tables.items()}
    keys = [g.key for g in tables[names[0]]]
    keys += [k for name in names[1:] for k in cells[name] if k not in keys]
    best = {n: (min if n in lower else max)(g.mean for g in tables[n]) for n in names}
    header = [*rows, *(f"{n} (mean ± {error})" for n in names), "n"]
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for key in keys:
        values = [_cell(cells[n].get(key), error, best[n]) for n in names]
        first = cells[names[0]].get(key)
        lines.append(f"| {' | '.join([*key, *values, str(first.n if first else 0)])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="transfuse-report", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="append", required=True, help="MLflow experiment name (repeatable)")
    parser.add_argument("--filter", default="", help="MLflow filter, e.g. \"tags.study_run = '20261124'\"")
    parser.add_argument("--rows", default="tags.method", help="comma-separated grouping keys")
    parser.add_argument("--columns", default="", help="comma-separated keys whose values become columns")
    parser.add_argument("--error", choices=("std", "sem"), default="std", help="the ± shown: std or standard error")
    parser.add_argument("--metric", default="test/acc", help="a metric, or several (comma-separated) as columns")
    parser.add_argument("--order", default="", help="comma-separated order of the first key's values")
    parser.add_argument(
        "--lower-is-better",
        nargs="?",
        const="*",
        default="",
        help="bold the smallest mean: of every metric, or of the comma-separated metrics given (loss, ECE, cost)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    args = parser.parse_args(argv)
    rows = [k.strip() for k in args.rows.split(",") if k.strip()]
    columns = [k.strip() for k in args.columns.split(",") if k.strip()]
    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    lower = metrics if args.lower_is_better == "*" else [m for m in args.lower_is_better.split(",") if m]
    order = [o for o in args.order.split(",") if o]
    if len(metrics) > 1 and columns:
        raise SystemExit("transfuse-report: error: several metrics become columns themselves; drop --columns")
    runs = fetch_runs(MlflowClient(args.tracking_uri), args.experiment, args.filter)
    tables = {m: summarise(runs, [*rows, *columns], m, order) for m in metrics}
    for metric, groups in tables.items():
        if not groups:
            raise SystemExit(f"transfuse-report: error: no FINISHED run with metric {metric!r} matches")
    if len(metrics) > 1:
        table = metrics_markdown(tables, rows, lower, args.error)
    else:
        groups = tables[metrics[0]]
        table = markdown(groups, [*rows, *columns], metrics[0], metrics[0] in lower, len(columns), args.error)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
