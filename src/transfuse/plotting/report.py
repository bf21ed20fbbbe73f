"""Figures of a results table: grouped bars with error bars, and metric-versus-size curves with error bands.

The functions take plain numbers (one ``(mean, error)`` pair per point, NaN where a cell has no run or a single
run), so they do not depend on how :mod:`transfuse.report` aggregates; each writes one PNG of a fixed size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from transfuse.plotting import new_figure, save_png

#: figure sizes in inches; the PNG is ``DPI`` times larger in pixels
BAR_SIZE = (7.0, 4.5)
CURVE_SIZE = (7.0, 4.5)

Points = Sequence[tuple[float, float]]


def use_log_scale(values: Sequence[float]) -> bool:
    """A log axis when positive values span at least a factor of 10 (1, 5, 10, 50 labels per class).

    >>> use_log_scale([1, 5, 10]), use_log_scale([10, 20, 50]), use_log_scale([0, 100])
    (True, False, False)
    """
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def bar_chart(
    path: Path,
    labels: Sequence[str],
    series: Mapping[str, Points],
    ylabel: str,
    legend_title: str = "",
    title: str = "",
) -> Path:
    """One cluster of bars per label, one colour per series (with a legend when there are several).

    A NaN mean (no run in that cell) leaves a gap rather than a zero-height bar that would read as a score of 0;
    a NaN error (a single run) draws no error bar.
    """
    figure = new_figure(*BAR_SIZE)
    axes = figure.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, (name, points) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        shown = [(x + offset, mean, err) for x, (mean, err) in enumerate(points) if not math.isnan(mean)]
        xs, means, errors = zip(*shown, strict=True) if shown else ((), (), ())
        axes.bar(xs, means, width, label=name)  # an empty series keeps its colour and legend entry
        spread = [(x, mean, err) for x, mean, err in shown if not math.isnan(err)]
        if spread:
            xs, means, errors = zip(*spread, strict=True)
            axes.errorbar(xs, means, yerr=errors, fmt="none", ecolor="black", capsize=3)
    rotate = sum(len(label) for label in labels) > 60
    axes.set_xticks(range(len(labels)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    axes.set_ylabel(ylabel)
    if len(series) > 1:
        # below the axes, in a row: never over a bar, and a long key name does not squeeze the plot
        ncols = min(len(series), 6)
        figure.legend(title=legend_title or None, fontsize="small", loc="outside lower center", ncols=ncols)
    if title:
        axes.set_title(title, fontsize="small")
    return save_png(figure, path)


def curve_chart(
    path: Path,
    x: Sequence[float],
    series: Mapping[str, Points],
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """One line per series over numeric ``x`` with a shaded mean ± error band; log x when :func:`use_log_scale`."""
    figure = new_figure(*CURVE_SIZE)
    axes = figure.add_subplot()
    for name, points in series.items():
        shown = sorted(
            (xi, mean, _zero_if_nan(err)) for xi, (mean, err) in zip(x, points, strict=True) if not math.isnan(mean)
        )
        if not shown:
            continue
        xs, means, errors = zip(*shown, strict=True)
        (line,) = axes.plot(xs, means, marker="o", label=name)
        low = [m - e for m, e in zip(means, errors, strict=True)]
        high = [m + e for m, e in zip(means, errors, strict=True)]
        axes.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if use_log_scale(x):
        axes.set_xscale("log")
        axes.minorticks_off()
    axes.set_xticks(sorted(x), [f"{v:g}" for v in sorted(x)])  # the measured sizes, not 10^k
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title, fontsize="small")
    return save_png(figure, path)
