"""What a test pass predicted, in counts small enough to keep: a confusion matrix and reliability bins.

The figures of a run (confusion matrix, reliability diagram) are drawn from these sums, so no prediction is
stored per sample however large the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric


@dataclass
class PredictionSummary:
    """Counts of one test pass.

    Attributes:
        confusion: ``[C, C]`` counts, rows the true class, columns the predicted one.
        bin_count: ``[B]`` samples whose top-1 softmax confidence falls in each of ``B`` equal bins of [0, 1].
        bin_confidence: ``[B]`` sum of those confidences.
        bin_correct: ``[B]`` how many of those predictions were right.
    """

    confusion: Tensor
    bin_count: Tensor
    bin_confidence: Tensor
    bin_correct: Tensor

    @property
    def total(self) -> int:
        return int(self.bin_count.sum())

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diagonal().sum()) / max(self.total, 1)

    @property
    def ece(self) -> float:
        return calibration_error(self.bin_count, self.bin_confidence, self.bin_correct)


def calibration_error(bin_count: Tensor, bin_confidence: Tensor, bin_correct: Tensor) -> float:
    """Expected calibration error (L1) from bin sums: ``sum_b |correct_b - confidence_b| / N``, which is the
    count-weighted gap between each bin's accuracy and its mean confidence (0 for no samples)."""
    total = float(bin_count.sum())
    return float((bin_correct.double() - bin_confidence.double()).abs().sum()) / total if total else 0.0


def summarise_predictions(logits: Tensor, labels: Tensor, num_classes: int, n_bins: int) -> PredictionSummary:
    """Confusion matrix and reliability-bin sums of one batch of logits.

    Bins are ``[0, 1/B), [1/B, 2/B), ..., [(B-1)/B, 1]`` like torchmetrics' calibration error, except that a
    confidence of exactly 1 joins the last bin (torchmetrics gives it a bin of its own). One-hot products
    instead of ``bincount`` keep the sums deterministic on GPUs.

    >>> s = summarise_predictions(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]), 2, 4)
    >>> s.confusion.tolist(), s.bin_count.tolist(), s.bin_correct.tolist()
    ([[1, 1], [0, 0]], [0, 0, 0, 2], [0, 0, 0, 1])
    """
    probabilities = logits.detach().float().softmax(dim=-1)
    confidence, predicted = probabilities.max(dim=-1)
    correct = (predicted == labels).float()
    true_hot = F.one_hot(labels, num_classes).float()
    confusion = (true_hot.T @ F.one_hot(predicted, num_classes).float()).round().long()
    boundaries = torch.linspace(0, 1, n_bins + 1, device=confidence.device)
    bins = (torch.bucketize(confidence, boundaries, right=True) - 1).clamp(0, n_bins - 1)
    bin_hot = F.one_hot(bins, n_bins).float()
    return PredictionSummary(
        confusion=confusion,
        bin_count=bin_hot.sum(dim=0).round().long(),
        bin_confidence=bin_hot.T @ confidence,
        bin_correct=(bin_hot.T @ correct).round().long(),
    )


class PredictionSummaryMetric(Metric):
    """Sums :func:`summarise_predictions` over batches (and over processes under DDP); ``compute`` gives a
    :class:`PredictionSummary` on the CPU."""

    full_state_update = False

    def __init__(self, num_classes: int, n_bins: int = 15) -> None:
        super().__init__()
        if num_classes < 1 or n_bins < 1:
            raise ValueError(f"expected num_classes >= 1 and n_bins >= 1, got {num_classes} and {n_bins}")
        self.num_classes, self.n_bins = num_classes, n_bins
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bin_count", torch.zeros(n_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bin_confidence", torch.zeros(n_bins), dist_reduce_fx="sum")
        self.add_state("bin_correct", torch.zeros(n_bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        batch = summarise_predictions(logits, labels, self.num_classes, self.n_bins)
        self.confusion += batch.confusion
        self.bin_count += batch.bin_count
        self.bin_confidence += batch.bin_confidence
        self.bin_correct += batch.bin_correct

    def compute(self) -> PredictionSummary:
        return PredictionSummary(
            self.confusion.cpu(), self.bin_count.cpu(), self.bin_confidence.cpu(), self.bin_correct.cpu()
        )
