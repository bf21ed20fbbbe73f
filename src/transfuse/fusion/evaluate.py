"""Scoring a fused model: the metrics every training run reports, the members beside it, and its cost."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from transfuse.fusion.fused import Fused
from transfuse.fusion.pool import Pool
from transfuse.fusion.tasks import TaskPool
from transfuse.models.classifier import classification_metrics
from transfuse.models.summary import model_cost

#: the held-out splits a fusion is scored on
SPLITS = ("val", "test")


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, prefix: str) -> dict[str, float]:
    """Accuracy, macro-F1 and calibration error, as every training run reports them."""
    metrics = classification_metrics(num_classes)
    metrics.update(logits, labels)
    return {f"{prefix}{k}": float(v) for k, v in metrics.compute().items()}


def fused_metrics(
    fused: Fused, pool: Pool, num_classes: int, latency_batches: Sequence[int] = (1, 256), repeats: int = 3
) -> dict[str, float]:
    """The fused model's split metrics, each member's accuracy beside them, the member validation would pick,
    and the cost (:func:`~transfuse.models.summary.model_cost` of its whole prediction path from raw test images,
    plus the members used), plus any fusion weights."""
    metrics: dict[str, float] = {}
    for split in SPLITS:
        metrics |= split_metrics(fused.logits[split], pool.labels[split], num_classes, f"{split}/")
        for i, member_logits in enumerate(pool.logits[split]):
            metrics[f"member/{i}/{split}/acc"] = pool.accuracy(member_logits, split)
    member_val, member_test = pool.member_accuracy("val"), pool.member_accuracy("test")
    chosen = max(range(len(pool.members)), key=lambda i: member_val[i])
    metrics["members/best_val/test/acc"] = member_test[chosen]  # the single model validation would pick
    metrics["members/mean/test/acc"] = statistics.fmean(member_test)
    metrics |= model_cost(fused.modules, fused.predict, pool.images["test"], latency_batches, repeats)
    metrics["cost/members_used"] = float(len(fused.used))
    if latency_batches:  # the name fusion runs logged the largest batch's latency under before cost/latency_ms_b<n>
        metrics["cost/latency_ms_per_image"] = metrics[f"cost/latency_ms_b{max(latency_batches)}"]
    return metrics | fused.weights


def task_metrics(
    fused: Fused, pool: TaskPool, latency_batches: Sequence[int] = (1, 256), repeats: int = 3
) -> dict[str, float]:
    """A multi-task merge scored as FusionBench tables it: each task's metrics with its own head
    (``test/<task>/acc``...), their mean over tasks (``test/acc``, not pooled over images, so every task
    weighs the same), each member on its own task (``member/<i>/test/acc``, the individual fine-tunes), the
    merged accuracy relative to them (``test/normalized_acc``, the mean of merged / individual per task), and the
    cost: the backbone and every head, timed on task 0's test images."""
    metrics: dict[str, float] = {}
    for split in SPLITS:
        for task in pool.tasks:
            logits, classes = fused.logits[f"{task.name}/{split}"], len(task.class_names)
            metrics |= split_metrics(logits, task.labels[split], classes, f"{split}/{task.name}/")
        for key in ("acc", "f1", "ece"):
            values = [metrics[f"{split}/{t.name}/{key}"] for t in pool.tasks if f"{split}/{t.name}/{key}" in metrics]
            if values:
                metrics[f"{split}/{key}"] = statistics.fmean(values)
        for i, task in enumerate(pool.tasks):
            metrics[f"member/{i}/{split}/acc"] = task.accuracy(task.logits[split], split)
        ratios = [
            metrics[f"{split}/{t.name}/acc"] / max(metrics[f"member/{i}/{split}/acc"], 1e-12)
            for i, t in enumerate(pool.tasks)
        ]
        metrics[f"{split}/normalized_acc"] = statistics.fmean(ratios)
    metrics["members/mean/test/acc"] = statistics.fmean(metrics[f"member/{i}/test/acc"] for i in range(len(pool.tasks)))
    test_images = pool.tasks[0].images["test"]
    metrics |= model_cost(fused.modules, fused.predict, test_images, latency_batches, repeats)
    metrics["cost/members_used"] = float(len(fused.used))
    return metrics | fused.weights
