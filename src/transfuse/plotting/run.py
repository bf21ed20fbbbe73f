"""The figures of one training run: learning curves, test confusion matrix, test reliability diagram.

Functions take plain numbers and tensors and return figures; reading them from MLflow is
:meth:`transfuse.tracking.TrackedRun.log_plots`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from transfuse.models.summary import calibration_error
from transfuse.plotting import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: ``{label: [(epoch, value), ...]}``, one line per label
Curves = Mapping[str, Sequence[tuple[float, float]]]

CURVES_SIZE = (10.0, 4.0)
RELIABILITY_SIZE = (5.0, 6.0)
#: up to this many classes the confusion matrix writes its counts in the cells
ANNOTATE_MAX_CLASSES = 20


def confusion_size(num_classes: int) -> tuple[float, float]:
    """Inches of a confusion matrix: grows with the classes so that their names stay legible, up to 16."""
    side = min(4.0 + 0.4 * num_classes, 16.0)
    return side + 1.0, side  # the extra width holds the colour bar


def learning_curves(loss: Curves, accuracy: Curves) -> Figure:
    """Loss and accuracy per epoch side by side (e.g. ``{"train": [...], "val": [...]}`` in each)."""
    figure = new_figure(*CURVES_SIZE)
    for axes, curves, name in zip(figure.subplots(1, 2), (loss, accuracy), ("loss", "accuracy"), strict=True):
        _draw_curves(axes, curves, name)
    return figure


def _draw_curves(axes: Axes, curves: Curves, name: str) -> None:
    from matplotlib.ticker import MaxNLocator

    for label, points in curves.items():
        if points:
            epochs, values = zip(*points, strict=True)
            axes.plot(epochs, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    axes.set_title(name)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(name)
    axes.grid(alpha=0.3)
    if any(curves.values()):
        axes.legend()
    else:
        axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes, color="grey")


def confusion_matrix(confusion: Tensor, class_names: Sequence[str]) -> Figure:
    """Test counts, rows the true class and columns the predicted one; numbers in the cells for few classes."""
    counts = confusion.detach().cpu().long()
    n = counts.shape[0]
    if counts.shape != (n, n) or len(class_names) != n:
        raise ValueError(f"expected a square matrix over {len(class_names)} classes, got shape {tuple(counts.shape)}")
    figure = new_figure(*confusion_size(n))
    axes = figure.subplots()
    image = axes.imshow(counts.numpy(), cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set_xticks(range(n), list(class_names), rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    axes.set_yticks(range(n), list(class_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = float(counts.diagonal().sum()) / max(int(counts.sum()), 1)
    axes.set_title(f"test confusion matrix (n={int(counts.sum())}, acc={accuracy:.3f})")
    if n <= ANNOTATE_MAX_CLASSES:
        threshold = counts.max().item() / 2
        for true, row in enumerate(counts.tolist()):
            for predicted, value in enumerate(row):
                colour = "white" if value > threshold else "black"
                axes.text(predicted, true, str(value), ha="center", va="center", color=colour, fontsize=10)
    return figure


def reliability_diagram(bin_count: Tensor, bin_confidence: Tensor, bin_correct: Tensor) -> Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with the bin counts below.

    Bars span their bin; the gap to each bin's mean confidence is shaded, and ECE (the count-weighted mean
    gap) is in the title.
    """
    count, confidence, correct = (t.detach().cpu().double() for t in (bin_count, bin_confidence, bin_correct))
    n_bins = len(count)
    filled = count > 0
    accuracy = torch.where(filled, correct / count.clamp(min=1), torch.zeros_like(count))
    mean_confidence = torch.where(filled, confidence / count.clamp(min=1), torch.zeros_like(count))
    ece = calibration_error(count, confidence, correct)
    left, width = torch.arange(n_bins).double() / n_bins, 1.0 / n_bins

    figure = new_figure(*RELIABILITY_SIZE)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(left.tolist(), accuracy.tolist(), width=width, align="edge", edgecolor="black", label="accuracy")
    gaps = filled.nonzero().flatten().tolist()
    top.bar(
        [left[i].item() for i in gaps],
        [(mean_confidence[i] - accuracy[i]).item() for i in gaps],
        bottom=[accuracy[i].item() for i in gaps],
        width=width,
        align="edge",
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"test reliability (ECE={ece:.4f}, {n_bins} bins)")
    top.legend(loc="upper left")
    bottom.bar(left.tolist(), count.tolist(), width=width, align="edge", edgecolor="black", color="grey")
    bottom.set_xlabel("confidence (top-1 softmax)")
    bottom.set_ylabel("samples")
    return figure
