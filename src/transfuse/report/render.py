"""Renderers of a :class:`~transfuse.report.table.Table`: Markdown, CSV, LaTeX and figures.

They all read the same table, so every output shows the same numbers. Figures import matplotlib (through
:mod:`transfuse.plotting.report`) only when drawn, so a text-only report stays light.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from transfuse.errors import ReportError
from transfuse.report.checks import MIXED_MARK
from transfuse.report.query import CHECKPOINTS
from transfuse.report.table import Cell, Table


def _number(value: float) -> str:
    """Four decimals for scores; large counts (parameters) as grouped integers."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"


def _text(cell: Cell, error: str, plus_minus: str, bold: str, mark: str) -> str:
    """``mean ± error`` of a cell (the mean alone for a single run, ``n/a`` where no run), ``bold`` if best,
    followed by ``mark`` if its runs differ in more than the seed."""
    if cell.group is None:
        return "n/a"
    text = _number(cell.group.mean)
    if cell.group.n > 1:
        text += f" {plus_minus} {_number(cell.error(error))}"
    text = bold.format(text) if cell.best else text
    return text + mark if cell.mixed else text


def to_markdown(table: Table) -> str:
    """A Markdown table, the best of each column in bold, with the caption below it and a paragraph for each
    problem (a cell mixing recipes, marked †; a column mixing test data)."""
    n_column = not table.column_keys
    header = [*table.row_keys, *table.header, *(["n"] if n_column else [])]
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [_text(c, table.error, "±", "**{}**", f" {MIXED_MARK}") for c in row.cells]
        lines.append(f"| {' | '.join([*row.key, *cells, *([str(row.n)] if n_column else [])])} |")
    lines += [f"\n{text}" for text in [table.caption, *table.notes]]
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
        MIXED_MARK: r"\textsuperscript{\textdagger}",
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
    and its notes as comments above it (escaped, so they can become the ``\\caption``)."""
    n_column = not table.column_keys
    header = [*table.row_keys, *table.header, *(["n"] if n_column else [])]
    spec = "l" * len(table.row_keys) + "r" * (len(header) - len(table.row_keys))
    lines = [f"% {latex_escape(text)}" for text in [table.caption, *table.notes]]
    lines += [f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [_text(c, table.error, r"$\pm$", r"\textbf{{{}}}", latex_escape(MIXED_MARK)) for c in row.cells]
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
    """The x values of a curve: the values of the single numeric column key.

    Raises:
        ReportError: not exactly one column key, or a value of it that is not a finite number.
    """
    if len(table.column_keys) != 1:
        raise ReportError(
            "--curve needs exactly one --columns key with numeric values "
            f"(e.g. params.data.train_per_class), got {len(table.column_keys)}"
        )
    x = [_finite(value) for value in table.header]
    if None in x:
        wrong = table.header[x.index(None)]
        raise ReportError(f"--curve needs numeric values of {table.column_keys[0]}, got {wrong!r}")
    return x


def draw_curve(table: Table, path: Path) -> Path:
    """The metric against the numeric column key, one line per row with a ± band."""
    from transfuse.plotting.report import curve_chart

    x = curve_axis(table)
    series = {" / ".join(row.key): _points(row.cells, table.error) for row in table.rows}
    metric = table.rows[0].cells[0].metric
    return curve_chart(path, x, series, table.column_keys[0], metric, _title(table))
