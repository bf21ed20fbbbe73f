"""What a model did and what it costs, in figures small enough to keep.

- What a test pass predicted: a confusion matrix and reliability bins. The figures of a run (confusion matrix,
  reliability diagram) are drawn from these sums, so no prediction is stored per sample however large the
  test set.
- What a model costs (:func:`model_cost`), logged by every run that produces a model (``transfuse-train``,
  ``transfuse-fuse``) under ``cost/``: parameters, non-zero parameters (what pruning removes), FLOPs per image,
  latency per image at batch 1 and at a large batch, and the size of its weights.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode
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


# --- cost ------------------------------------------------------------------------------------------------------
def count_params(modules: Iterable[nn.Module]) -> tuple[int, int]:
    """All parameters and the non-zero ones (pruned weights are zeros) of ``modules``, each counted once even
    when modules share it."""
    seen: dict[int, Tensor] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in seen.values())
    return total, nonzero


@torch.no_grad()
def count_flops(predict: Callable[[Tensor], object], images: Tensor) -> float:
    """FLOPs per image of ``predict(images)``, as :class:`torch.utils.flop_counter.FlopCounterMode` counts them.

    FlopCounterMode counts matrix products and convolutions (and attention) only, each multiply-add as two
    FLOPs, and no bias, normalisation, activation or pooling: timm's ResNet-18 at 224x224 is 1.81 GMACs, counted
    as 3.63e9 FLOPs. ``images`` may live on the ``meta`` device (shapes only, nothing computed).

    >>> count_flops(nn.Linear(5, 3), torch.zeros(2, 5))  # 2 * 5 * 3 per image
    30.0
    """
    with FlopCounterMode(display=False) as counter:
        predict(images)
    return counter.get_total_flops() / len(images)


@torch.no_grad()
def latency_ms(predict: Callable[[Tensor], object], images: Tensor, repeats: int = 3) -> float:
    """Median wall time per image of ``predict(images)`` (one batch), after one warm-up pass."""
    predict(images)
    times = []
    for _ in range(repeats):
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        predict(images)
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / len(images)


def weights_mb(modules: Iterable[nn.Module]) -> float:
    """Megabytes (10^6 bytes) of the modules' weights (parameters and buffers) as ``torch.save`` writes them:
    the size of the checkpoint that holds the model, without optimiser state."""
    buffer = io.BytesIO()
    torch.save([m.state_dict() for m in modules], buffer)
    return buffer.getbuffer().nbytes / 1e6


def model_cost(
    modules: Sequence[nn.Module],
    predict: Callable[[Tensor], object],
    images: Tensor,
    latency_batches: Sequence[int] = (1, 256),
    repeats: int = 3,
) -> dict[str, float]:
    """The ``cost/*`` metrics of a model: what ``modules`` hold and what ``predict`` (the whole inference path,
    from the inputs ``images``) computes and takes.

    Returns ``cost/params``, ``cost/nonzero_params``, ``cost/flops`` (per image, one image counted),
    ``cost/checkpoint_mb`` and ``cost/latency_ms_b<n>`` for each ``n`` of ``latency_batches``: the median time per
    image of a batch of ``n`` (``images`` repeated when it has fewer). Batch 1 is the latency one request sees;
    a large batch is the throughput of offline scoring.
    """
    images = images[: max([1, *(latency_batches or ())])]  # a tensor, also where a streamed split decodes a slice
    params, nonzero = count_params(modules)
    cost = {
        "cost/params": float(params),
        "cost/nonzero_params": float(nonzero),
        "cost/flops": count_flops(predict, images[:1]),
        "cost/checkpoint_mb": weights_mb(modules),
    }
    for n in latency_batches or ():
        batch = images[:n] if len(images) >= n else torch.cat([images] * -(-n // len(images)))[:n]
        cost[f"cost/latency_ms_b{n}"] = latency_ms(predict, batch, repeats)
    return cost
