"""``transfuse-report``: a results table read back from MLflow, mean ± standard deviation over seeds.

The table groups runs by config keys (``tags.method``, ``params.data.train_per_class``...) and aggregates one
metric or several; it is what study READMEs show, so the numbers there come from the tracking store, not from
logs. The table is built once as data and rendered from it to Markdown, CSV and LaTeX and drawn as figures, so
every output shows the same numbers; ``--log`` stores the report itself as an MLflow run.

Each cell should average seeds of one recipe and each column compare rows tested on the same data: a table that
mixes them marks the cells (†), says below the caption what differs, and bolds nothing in such a column;
``--strict`` refuses it. ``--list`` names the experiments of the store.

The library raises :class:`~transfuse.errors.ReportError`; only :func:`main` turns an error into one line and an
exit status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from transfuse.errors import ReportError, TransfuseError
from transfuse.report.checks import strict_error
from transfuse.report.query import (
    CHECKPOINTS,
    DEFAULT_URI,
    check_store,
    checkpoint_metric,
    empty_selection,
    fetch_runs,
    missing_metric,
)
from transfuse.report.render import curve_axis, draw_bar, draw_curve, to_csv, to_latex, to_markdown
from transfuse.report.table import ERRORS, build_table, summarise

PROG = "transfuse-report"


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

    from transfuse.tracking.run import MAX_PARAM_LENGTH, tracked_run  # heavier imports: only when logging

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
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
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
    table.add_argument(
        "--strict",
        action="store_true",
        help="refuse a table with a cell whose runs differ in more than the seed, or a column whose rows were "
        "tested on different data (without it, such cells are marked † and explained below the caption)",
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
    p.add_argument(
        "--list", action="store_true", help="list the experiments of the store, with their runs per status, and exit"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """The command: every error a user can fix exits with one line ``transfuse-report: error: ...``."""
    args = parser().parse_args(argv)
    try:
        make_report(args)
    except TransfuseError as err:
        raise SystemExit(f"{PROG}: error: {err}") from None


def make_report(args: argparse.Namespace) -> None:
    """Select, tabulate, print and write what ``args`` asks for.

    Raises:
        ReportError: the arguments select nothing to tabulate, or cannot be combined.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if args.list:
        from transfuse.tracking.listing import experiments, format_experiments

        check_store(args.tracking_uri)
        print(format_experiments(experiments(MlflowClient(args.tracking_uri))))
        return
    rows, columns, order = _split(args.rows), _split(args.columns), _split(args.order)
    metrics = [checkpoint_metric(m, args.checkpoint) for m in _split(args.metric)]
    named = _split(args.lower_is_better)
    lower = metrics if args.lower_is_better == "*" else [checkpoint_metric(m, args.checkpoint) for m in named]
    sweeps = [s.rstrip("/") for s in args.sweep]
    if not args.experiment and not sweeps:
        raise ReportError("name an --experiment, or a --sweep to search every experiment")
    if len(metrics) > 1 and columns:
        raise ReportError("several metrics become columns themselves; drop --columns")
    if not rows:
        raise ReportError("--rows needs at least one key")
    check_store(args.tracking_uri)
    try:
        client = MlflowClient(args.tracking_uri)
        runs = fetch_runs(client, args.experiment, args.filter, sweeps)
        if not runs:
            raise ReportError(empty_selection(client, args.experiment, args.filter, sweeps))
        tables = {m: summarise(runs, [*rows, *columns], m, order) for m in metrics}
    except (MlflowException, ValueError) as err:  # a store MLflow cannot open, a value it rejects
        message = str(getattr(err, "message", err)).strip().splitlines()[0]
        raise ReportError(message) from None
    for metric, groups in tables.items():
        if not groups:
            raise ReportError(missing_metric(runs, metric, sweeps))
    table = build_table(tables, rows, columns, lower, args.error, args.checkpoint, order)
    if args.strict and (refusal := strict_error(table.problems)):
        raise ReportError(refusal)
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
