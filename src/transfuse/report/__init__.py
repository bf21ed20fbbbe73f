"""``transfuse-report``: results tables read back from MLflow (see :mod:`transfuse.report.cli`).

Split by role so each part stays small and testable on its own: :mod:`~transfuse.report.query` selects runs,
:mod:`~transfuse.report.table` aggregates them into a table, :mod:`~transfuse.report.render` writes that table
out, and :mod:`~transfuse.report.cli` is the command (``transfuse-report``). None of them imports torch. The
library names are re-exported here; the command's are not, so ``python -m transfuse.report.cli`` runs cleanly.
"""

from __future__ import annotations

from transfuse.errors import ReportError
from transfuse.report.query import CHECKPOINTS, DEFAULT_URI, check_keys, checkpoint_metric, fetch_runs, field
from transfuse.report.render import curve_axis, draw_bar, draw_curve, latex_escape, to_csv, to_latex, to_markdown
from transfuse.report.table import ERRORS, Cell, Group, Row, Table, build_table, summarise

__all__ = [
    "CHECKPOINTS",
    "DEFAULT_URI",
    "ERRORS",
    "Cell",
    "Group",
    "ReportError",
    "Row",
    "Table",
    "build_table",
    "check_keys",
    "checkpoint_metric",
    "curve_axis",
    "draw_bar",
    "draw_curve",
    "fetch_runs",
    "field",
    "latex_escape",
    "summarise",
    "to_csv",
    "to_latex",
    "to_markdown",
]
