"""``transfuse-report``: a results table read back from MLflow, mean ± standard deviation over seeds.

The table groups runs by config keys (``tags.method``, ``params.data.train_per_class``...) and aggregates one
metric or several; it is what study READMEs show, so the numbers there come from the tracking store, not from
logs. The table is built once as data (:func:`build_table`) and rendered from it to Markdown, CSV and LaTeX and
drawn as figures, so every output shows the same numbers; ``--log`` stores the report itself as an MLflow run.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

DEFAULT_URI = "sqlite:///mlflow.db"
#: checkpoint rules: which weights a ``test/*`` metric was measured on, as the caption states it
CHECKPOINTS = {"best": "best validation", "last": "last epoch"}
#: what the ± of a cell is, as the caption states it
ERRORS = {"std": "sample standard deviation (n - 1)", "sem": "standard error of the mean"}
#: tag listing (space-separated) every Hydra sweep that ran or reused a run
SWEEPS_TAG = "sweeps"


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


def _experiment_ids(client: MlflowClient, names: Sequence[str]) -> list[str]:
    """Ids of the named experiments, or of every active one when none is named."""
    if not names:
        ids, token = [], None
        while True:
            page = client.search_experiments(page_token=token)
            ids += [experiment.experiment_id for experiment in page]
            token = page.token
            if not token:
                return ids
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise SystemExit(f"transfuse-report: error: no experiment named {name!r} in {client.tracking_uri}")
        ids.append(experiment.experiment_id)
    return ids


def _quoted(value: str) -> str:
    """A string literal for an MLflow filter (which has no escape sequences, only two kinds of quotes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise SystemExit(f"transfuse-report: error: {value!r} holds both kinds of quotes; MLflow cannot filter on it")


def fetch_runs(
    client: MlflowClient, experiments: Sequence[str], filter_string: str = "", sweeps: Sequence[str] = ()
) -> list[Run]:
    """FINISHED runs of the named experiments (every active one when none is named) that match an MLflow filter
    and, when ``sweeps`` are given, that one of those Hydra sweeps ran or reused (their ``sweeps`` tag)."""
    ids = _experiment_ids(client, experiments)
    if not ids:
        return []
    base = [q for q in (filter_string, "attributes.status = 'FINISHED'") if q]
    if not sweeps:
        return client.search_runs(ids, " and ".join(base), max_results=50000)
    runs: dict[str, Run] = {}
    for sweep in sweeps:
        # LIKE narrows the search inside the store, but an id can be a substring of another
        # (``.../07-01-0`` of ``.../07-01-02``), so the space-separated list is checked exactly afterwards
        query = " and ".join([*base, f"tags.{SWEEPS_TAG} LIKE {_quoted(f'%{sweep}%')}"])
        for run in client.search_runs(ids, query, max_results=50000):
            if sweep in run.data.tags.get(SWEEPS_TAG, "").split():
                runs.setdefault(run.info.run_id, run)
    return list(runs.values())


def _natural(value: str) -> tuple[int, float | str]:
    """Sort key putting numbers in numeric order (1, 5, 10, 50) before other strings."""
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def summarise(runs: Sequence[Run], rows: Sequence[str], metric: str, order: Sequence[str] = ()) -> list[Group]:
    """Group runs by ``rows`` and collect ``metric``; runs without the metric are left out."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for run in runs:
        value = run.data.metrics.get(metric)
        if value is not None:
            groups.setdefault(tuple(str(field(run, k)) for k in rows), []).append(value)
    rank = {name: i for i, name in enumerate(order)}

    def position(group: Group) -> tuple:
        return (rank.get(group.key[0], len(rank)), *(_natural(v) for v in group.key))

    return sorted((Group(k, v) for k, v in groups.items()), key=position)


@dataclass(frozen=True)
class Cell:
    """One metric of one group; ``group`` is None where no run has it, ``best`` marks the column's best mean."""

    metric: str
    group: Group | None
    best: bool = False

    def error(self, kind: str) -> float:
        """The ± shown (``std`` or ``sem``); NaN for an empty cell or a single run."""
        if self.group is None:
            return math.nan
        return self.group.std if kind == "std" else self.group.sem


@dataclass(frozen=True)
class Row:
    """The values of the row keys and one cell per value column; ``n`` is the runs of the first metric (of every
    cell, pivoted), shown in the ``n`` column of a table that is not pivoted."""

    key: tuple[str, ...]
    cells: tuple[Cell, ...]
    n: int


@dataclass(frozen=True)
class Table:
    """A results table as data, rendered by :func:`to_markdown`, :func:`to_csv` and :func:`to_latex`.

    ``column_keys`` are the grouping keys pivoted into columns (their values head the value columns, and n per
    cell is in the caption); without them the table has an ``n`` column. ``error`` and ``checkpoint`` are the
    keys of :data:`ERRORS` and :data:`CHECKPOINTS` that the caption spells out.
    """

    row_keys: tuple[str, ...]
    column_keys: tuple[str, ...]
    header: tuple[str, ...]
    rows: tuple[Row, ...]
    error: str
    checkpoint: str
    caption: str


def _flagged(metric: str, group: Group | None, best: float) -> Cell:
    return Cell(metric, group, group is not None and group.mean == best)


def build_table(
    tables: Mapping[str, Sequence[Group]],
    rows: Sequence[str],
    columns: Sequence[str] = (),
    lower: Sequence[str] = (),
    error: str = "std",
    checkpoint: str = "best",
) -> Table:
    """Lay out the groups of each metric (as from :func:`summarise` over ``rows + columns``) as one table.

    Several metrics become the value columns, one row per group, with the n of the first metric. One metric with
    ``columns`` is pivoted: one row per value of the row keys and one column per value of the column keys
    (``rows=method, columns=pair`` gives one row per method and one column per pair). The best mean of each
    column is flagged, the smallest for metrics in ``lower``.
    """
    if error not in ERRORS:
        raise ValueError(f"error must be one of {list(ERRORS)}, got {error!r}")
    names = list(tables)
    if columns and len(names) > 1:
        raise ValueError("several metrics become columns themselves; they cannot also be pivoted by keys")
    if not rows:
        raise ValueError("a table needs at least one row key")
    pick = {name: min if name in lower else max for name in names}
    if columns:
        metric, split = names[0], len(rows)
        groups = tables[metric]
        row_values = list(dict.fromkeys(g.key[:split] for g in groups))
        col_values = sorted({g.key[split:] for g in groups}, key=lambda key: [_natural(v) for v in key])
        cells = {(g.key[:split], g.key[split:]): g for g in groups}
        best = {c: pick[metric](g.mean for (_, gc), g in cells.items() if gc == c) for c in col_values}
        header = tuple(" / ".join(c) for c in col_values)
        body = []
        for r in row_values:
            line = tuple(_flagged(metric, cells.get((r, c)), best[c]) for c in col_values)
            body.append(Row(r, line, sum(c.group.n for c in line if c.group)))
        what = f"{metric} (mean ± {error})"
    else:
        by_key = {name: {g.key: g for g in groups} for name, groups in tables.items()}
        keys = [g.key for g in tables[names[0]]]
        keys += [k for name in names[1:] for k in by_key[name] if k not in keys]
        best = {n: pick[n]((g.mean for g in tables[n]), default=math.nan) for n in names}
        header = tuple(f"{n} (mean ± {error})" for n in names)
        body = []
        for key in keys:
            line = tuple(_flagged(n, by_key[n].get(key), best[n]) for n in names)
            body.append(Row(key, line, line[0].group.n if line[0].group else 0))
        what = f"{names[0]} (mean ± {error})" if len(names) == 1 else f"mean ± {error}"
    counts = sorted({c.group.n for row in body for c in row.cells if c.group})
    n = "0" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    parts = [f"{what}, n = {n} runs per cell", *([f"columns: {', '.join(columns)}"] if columns else [])]
    caption = "; ".join([*parts, f"± = {ERRORS[error]}", f"checkpoint: {CHECKPOINTS[checkpoint]}"])
    return Table(tuple(rows), tuple(columns), header, tuple(body), error, checkpoint, caption)


def _number(value: float) -> str:
    """Four decimals for scores; large counts (parameters) as grouped integers."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"


def _text(cell: Cell, error: str, plus_minus: str, bold: str) -> str:
    """``mean ± error`` of a cell (the mean alone for a single run, ``n/a`` where no run), ``bold`` if best."""
    if cell.group is None:
        return "n/a"
    text = _number(cell.group.mean)
    if cell.group.n > 1:
        text += f" {plus_minus} {_number(cell.error(error))}"
    return bold.format(text) if cell.best else text


def to_markdown(table: Table) -> str:
    """A Markdown table, the best of each column in bold, with the caption below it."""
    n_column = not table.column_keys
    header = [*table.row_keys, *table.header, *(["n"] if n_column else [])]
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [_text(c, table.error, "±", "**{}**") for c in row.cells]
        lines.append(f"| {' | '.join([*row.key, *cells, *([str(row.n)] if n_column else [])])} |")
    lines.append(f"\n{table.caption}")
    return "\n".join(lines)


def _plain(value: float) -> float | str:
    return "" if math.isnan(value) else value


def to_csv(table: Table) -> str:
    """Long format, one line per group and metric: the grouping keys, metric, mean, std, sem and n at full
    precision (std and sem empty for a single run), for plotting or statistics elsewhere."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*table.row_keys, *table.column_keys, "metric", "mean", "std", "sem", "n"])
    for row in table.rows:
        for cell in row.cells:
            if (g := cell.group) is not None:
                writer.writerow([*g.key, cell.metric, g.mean, _plain(g.std), _plain(g.sem), g.n])
    return buffer.getvalue()


_LATEX = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "<": r"\textless{}",  # the default OT1 font encoding prints < and > as inverted ! and ?
        ">": r"\textgreater{}",
        "±": r"$\pm$",
    }
)


def latex_escape(text: str) -> str:
    r"""Text for a LaTeX table: special characters escaped, ``±`` as ``$\pm$``.

    >>> print(latex_escape("test/acc_top5 (mean ± std), 50% & more"))
    test/acc\_top5 (mean $\pm$ std), 50\% \& more
    """
    return text.translate(_LATEX)


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``), the best of each column in ``\\textbf``, the caption
    as a comment above it (escaped, so it can become the ``\\caption``)."""
    n_column = not table.column_keys
    header = [*table.row_keys, *table.header, *(["n"] if n_column else [])]
    spec = "l" * len(table.row_keys) + "r" * (len(header) - len(table.row_keys))
    lines = [f"% {latex_escape(table.caption)}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [_text(c, table.error, r"$\pm$", r"\textbf{{{}}}") for c in row.cells]
        lines.append(" & ".join([*map(latex_escape, row.key), *cells, *([str(row.n)] if n_column else [])]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _points(cells: Sequence[Cell], error: str) -> list[tuple[float, float]]:
    return [(c.group.mean, c.error(error)) if c.group else (math.nan, math.nan) for c in cells]


def _title(table: Table) -> str:
    return f"mean ± {table.error}; checkpoint: {CHECKPOINTS[table.checkpoint]}"


def draw_bar(table: Table, path: Path) -> Path:
    """Bars of the first metric per row, with the table's ±; pivoted tables give one colour per column value."""
    from transfuse.plotting.report import bar_chart

    shown = range(len(table.header)) if table.column_keys else range(1)
    series = {table.header[i]: _points([row.cells[i] for row in table.rows], table.error) for i in shown}
    metric = table.rows[0].cells[0].metric
    labels = [" / ".join(row.key) for row in table.rows]
    return bar_chart(path, labels, series, metric, ", ".join(table.column_keys), _title(table))


def _finite(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def curve_axis(table: Table) -> list[float]:
    """The x values of a curve: the values of the single numeric column key, or a clear error."""
    if len(table.column_keys) != 1:
        raise SystemExit(
            "transfuse-report: error: --curve needs exactly one --columns key with numeric values "
            f"(e.g. params.data.train_per_class), got {len(table.column_keys)}"
        )
    x = [_finite(value) for value in table.header]
    if None in x:
        wrong = table.header[x.index(None)]
        raise SystemExit(
            f"transfuse-report: error: --curve needs numeric values of {table.column_keys[0]}, got {wrong!r}"
        )
    return x


def draw_curve(table: Table, path: Path) -> Path:
    """The metric against the numeric column key, one line per row with a ± band."""
    from transfuse.plotting.report import curve_chart

    x = curve_axis(table)
    series = {" / ".join(row.key): _points(row.cells, table.error) for row in table.rows}
    metric = table.rows[0].cells[0].metric
    return curve_chart(path, x, series, table.column_keys[0], metric, _title(table))


def log_report(
    tracking_uri: str,
    experiment: str,
    params: Mapping[str, str],
    texts: Mapping[str, str],
    figures: Mapping[str, Path],
) -> str:
    """Store a report as a run (tag ``stage=report``): the selection as params, tables and figures as artifacts
    under ``report/``. The run ends FINISHED, or FAILED if logging raises. Returns its id."""
    from mlflow.entities import Param

    from transfuse.tracking import MAX_PARAM_LENGTH, tracked_run  # imports torch: only when logging

    with tracked_run(tracking_uri, experiment, "report", {"stage": "report"}) as run:
        run.client.log_batch(run.run_id, params=[Param(k, v[:MAX_PARAM_LENGTH]) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as staging:
            for name, text in texts.items():
                (Path(staging) / name).write_text(text)
            for name, source in figures.items():
                shutil.copyfile(source, Path(staging) / name)
            run.client.log_artifacts(run.run_id, staging, "report")
    return run.run_id


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transfuse-report", description=__doc__.splitlines()[0])
    select = p.add_argument_group("selection (FINISHED runs only)")
    select.add_argument(
        "--experiment",
        action="append",
        default=[],
        help="MLflow experiment name (repeatable); required unless --sweep is given, which then searches every "
        "active experiment",
    )
    select.add_argument("--filter", default="", help="MLflow filter, e.g. \"tags.study_run = '20261124'\"")
    select.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="ID",
        help="runs that this Hydra sweep ran or reused, e.g. multirun/2026-11-25/07-01-02 (repeatable: the union); "
        "matched exactly against the space-separated 'sweeps' tag",
    )
    select.add_argument(
        "--checkpoint",
        choices=tuple(CHECKPOINTS),
        default="best",
        help="weights the test metrics come from: best (best-validation checkpoint, test/*) or last "
        "(last-epoch weights: every test/x metric is read as test_last/x); stated in the caption",
    )
    table = p.add_argument_group("table")
    table.add_argument("--rows", default="tags.method", help="comma-separated grouping keys")
    table.add_argument("--columns", default="", help="comma-separated keys whose values become columns")
    table.add_argument("--error", choices=tuple(ERRORS), default="std", help="the ± shown: std or standard error")
    table.add_argument("--metric", default="test/acc", help="a metric, or several (comma-separated) as columns")
    table.add_argument("--order", default="", help="comma-separated order of the first key's values")
    table.add_argument(
        "--lower-is-better",
        nargs="?",
        const="*",
        default="",
        help="bold the smallest mean: of every metric, or of the comma-separated metrics given (loss, ECE, cost)",
    )
    out = p.add_argument_group("outputs (the Markdown table is always printed)")
    out.add_argument("--markdown", type=Path, metavar="FILE", help="also write the Markdown table to this file")
    out.add_argument("--csv", type=Path, metavar="FILE", help="long format: keys, metric, mean, std, sem, n per line")
    out.add_argument("--latex", type=Path, metavar="FILE", help="a booktabs tabular, best in bold")
    out.add_argument("--bar", type=Path, metavar="FILE.png", help="bar chart of the first metric with error bars")
    out.add_argument(
        "--curve",
        type=Path,
        metavar="FILE.png",
        help="the metric against the one numeric --columns key (e.g. params.data.train_per_class), a line per row",
    )
    out.add_argument("--log", action="store_true", help="store the report (tables, figures) as an MLflow run")
    out.add_argument("--log-experiment", default="transfuse-reports", help="experiment of the --log run")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    rows, columns, order = _split(args.rows), _split(args.columns), _split(args.order)
    metrics = [checkpoint_metric(m, args.checkpoint) for m in _split(args.metric)]
    named = _split(args.lower_is_better)
    lower = metrics if args.lower_is_better == "*" else [checkpoint_metric(m, args.checkpoint) for m in named]
    sweeps = [s.rstrip("/") for s in args.sweep]
    if not args.experiment and not sweeps:
        raise SystemExit("transfuse-report: error: name an --experiment, or a --sweep to search every experiment")
    if len(metrics) > 1 and columns:
        raise SystemExit("transfuse-report: error: several metrics become columns themselves; drop --columns")
    if not rows:
        raise SystemExit("transfuse-report: error: --rows needs at least one key")
    try:
        runs = fetch_runs(MlflowClient(args.tracking_uri), args.experiment, args.filter, sweeps)
        tables = {m: summarise(runs, [*rows, *columns], m, order) for m in metrics}
    except (MlflowException, ValueError) as err:  # a filter MLflow cannot parse, a key without a prefix
        message = str(getattr(err, "message", err)).strip().splitlines()[0]
        raise SystemExit(f"transfuse-report: error: {message}") from None
    for metric, groups in tables.items():
        if not groups:
            hint = " (--checkpoint last reads test/x as test_last/x)" if metric.startswith("test_last/") else ""
            raise SystemExit(f"transfuse-report: error: no FINISHED run with metric {metric!r} matches{hint}")
    table = build_table(tables, rows, columns, lower, args.error, args.checkpoint)
    if args.curve:
        curve_axis(table)  # fail before writing anything
    texts = {"report.md": to_markdown(table) + "\n", "report.csv": to_csv(table), "report.tex": to_latex(table)}
    print(texts["report.md"], end="")
    for path, name in ((args.markdown, "report.md"), (args.csv, "report.csv"), (args.latex, "report.tex")):
        if path:
            _write(path, texts[name])
    figures = {}
    if args.bar:
        figures["bar.png"] = draw_bar(table, args.bar)
    if args.curve:
        figures["curve.png"] = draw_curve(table, args.curve)
    if args.log:
        selection = {
            "experiments": ",".join(args.experiment) or "(every active experiment)",
            "filter": args.filter,
            "sweeps": " ".join(sweeps),
            "checkpoint": args.checkpoint,
            "error": args.error,
            "rows": ",".join(rows),
            "columns": ",".join(columns),
            "metrics": ",".join(metrics),
        }
        run_id = log_report(args.tracking_uri, args.log_experiment, selection, texts, figures)
        print(f"report logged as MLflow run {run_id} in experiment {args.log_experiment!r}")


if __name__ == "__main__":
    main()
