"""PNG figures for runs and reports, drawn with matplotlib's non-interactive Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: resolution of every saved figure; a figure of ``figsize=(w, h)`` inches is ``w * DPI`` x ``h * DPI`` pixels
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A figure that is not registered with pyplot, so it never needs a display and is freed when dropped."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG of exactly its size in pixels (no tight bounding box that would change it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path
