"""Scoring a fused model: the metrics every training run reports, the members beside it, and its cost."""

from __future__ import annotations

import statistics
import time

import torch

from transfuse.fusion.methods import Fused
from transfuse.fusion.pool import Pool
from transfuse.models.classifier import classification_metrics

#: the held-out splits a fusion is scored on
SPLITS = ("val", "test")


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, prefix: str) -> dict[str, float]:
    """Accuracy, macro-F1 and calibration error, as every training run reports them."""
    metrics = classification_metrics(num_classes)
    metrics.update(logits, labels)
    return {f"{prefix}{k}": float(v) for k, v in metrics.compute().items()}


def latency_ms(fused: Fused, images: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time per image of the fused model's whole prediction path, after one warm-up pass."""
    fused.predict(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fused.predict(images)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / len(images)


def fused_metrics(fused: Fused, pool: Pool, num_classes: int, latency_images: int) -> dict[str, float]:
    """The fused model's split metrics, each member's accuracy beside them, the member validation would pick,
    and the cost (parameters, members used, latency per image), plus any fusion weights."""
    metrics: dict[str, float] = {}
    for split in SPLITS:
        metrics |= split_metrics(fused.logits[split], pool.labels[split], num_classes, f"{split}/")
        for i, member_logits in enumerate(pool.logits[split]):
            metrics[f"member/{i}/{split}/acc"] = pool.accuracy(member_logits, split)
    member_val, member_test = pool.member_accuracy("val"), pool.member_accuracy("test")
    chosen = max(range(len(pool.members)), key=lambda i: member_val[i])
    metrics["members/best_val/test/acc"] = member_test[chosen]  # the single model validation would pick
    metrics["members/mean/test/acc"] = statistics.fmean(member_test)
    metrics["cost/params"] = float(fused.params)
    metrics["cost/members_used"] = float(len(fused.used))
    metrics["cost/latency_ms_per_image"] = latency_ms(fused, pool.images["test"][:latency_images])
    return metrics | fused.weights
