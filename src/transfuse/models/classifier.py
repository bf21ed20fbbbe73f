"""The LightningModule of every classification stage: backbone -> head, cross-entropy, per-split metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassF1Score

from transfuse.finetune import Full

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def classification_metrics(num_classes: int, ece_bins: int = 15) -> MetricCollection:
    """Accuracy, macro-F1 and expected calibration error, the figures every run reports."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "ece": MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1"),
        }
    )


class ImageClassifier(L.LightningModule):
    """A backbone and a head trained with cross-entropy; the optimiser and scheduler come from config.

    Args:
        backbone: module mapping images to pooled features (``num_features`` wide).
        head: module mapping features to class logits.
        optimizer: partial optimiser, completed with the trainable parameters.
        scheduler: partial LR scheduler (stepped per epoch), or None.
        finetune: strategy that decides what trains (see :mod:`transfuse.finetune`).
        class_names: names of the classes, saved in checkpoints so later stages can check them.
        label_smoothing: cross-entropy label smoothing.
        ece_bins: bins of the expected calibration error.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        finetune: Any = None,
        class_names: Sequence[str] = (),
        label_smoothing: float = 0.0,
        ece_bins: int = 15,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "head", "optimizer", "scheduler", "finetune"], logger=False)
        self.backbone, self.head = backbone, head
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.class_names = list(class_names)
        metrics = classification_metrics(len(self.class_names), ece_bins)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        #: submodules kept in eval mode while training (frozen BatchNorm statistics); set by the strategy.
        self.frozen: tuple[nn.Module, ...] = ()
        (finetune or Full()).apply(self)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def on_train_start(self) -> None:
        # Lightning keeps whatever train/eval modes it finds, so apply the frozen modules' eval mode here.
        self.train()

    def _step(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection, split: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        metrics.update(logits.detach(), labels)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, batch_size=len(labels))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=len(labels))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, self.test_metrics, "test")

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(trainable)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["transfuse"] = {"class_names": self.class_names}
