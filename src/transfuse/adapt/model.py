"""The LightningModule of ``stage=adapt``: source cross-entropy plus an alignment loss on both domains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from transfuse.adapt.data import DOMAINS
from transfuse.models.classifier import ImageClassifier, TrainOutputs, classification_metrics

AlignmentFactory = Callable[[int], nn.Module]


class AdaptClassifier(ImageClassifier):
    """An :class:`ImageClassifier` trained on labelled source and unlabelled target batches.

    Metrics: ``val/*`` and ``test_source/*`` on the source, ``val_target/*`` and ``test/*`` on the target (so
    ``test/acc`` is the adapted accuracy), ``train/class_loss``, ``train/align_loss`` and ``val/proxy_a_distance``
    (how well a linear
    classifier tells the domains apart in feature space: 0 indistinguishable, 2 fully separable).

    Args:
        alignment: partial of an alignment method (see :mod:`transfuse.adapt.methods`), completed with the
            backbone's feature width; called as ``alignment(source_features, target_features, progress)``.
        **kwargs: as for :class:`ImageClassifier`.
    """

    def __init__(self, alignment: AlignmentFactory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alignment = alignment(self.backbone.num_features)
        metrics = classification_metrics(len(self.class_names), self.hparams.ece_bins, self.criterion)
        self.eval_metrics = nn.ModuleDict(
            {
                "val_source": self.val_metrics,
                "val_target": metrics.clone(prefix="val_target/"),
                "test_source": metrics.clone(prefix="test_source/"),
                "test_target": self.test_metrics,
            }
        )
        self._features: dict[str, list[Tensor]] = {d: [] for d in DOMAINS}

    def progress(self) -> float:
        """Share of training done, for schedules such as DANN's lambda ramp."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        return min(self.global_step / total, 1.0) if total else 0.0

    def train_outputs(self, batch: dict[str, Any]) -> TrainOutputs:
        """Source and target images through the backbone together; cross-entropy on the source only, and the
        alignment of the two feature sets as the ``align_loss`` term."""
        images, labels = batch["source"]
        features = self.backbone(torch.cat([images, batch["target"]]))
        source_features, target_features = features[: len(images)], features[len(images) :]
        align = self.alignment(source_features, target_features, self.progress())
        return TrainOutputs(self.head(source_features), labels, {"align_loss": align})

    def _eval_step(self, batch: tuple[Tensor, ...], split: str, dataloader_idx: int) -> None:
        images, labels, *_ = batch  # a fused source (data=mix) also gives each image's source index
        domain = DOMAINS[dataloader_idx]
        features = self.backbone(images)
        logits = self.head(features)
        metrics = self.eval_metrics[f"{split}_{domain}"]
        metrics.update(logits, labels)
        if metrics is self.test_metrics:  # the target test split feeds the run's figures
            self.test_predictions.update(logits, labels)
        if split == "val":
            self._features[domain].append(features.detach().cpu())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics(self.eval_metrics["test_source"])
        self.log_epoch_metrics(self.eval_metrics["test_target"])

    def on_validation_epoch_end(self) -> None:
        from transfuse.adapt.losses import proxy_a_distance

        self.log_epoch_metrics(self.eval_metrics["val_source"], prog_bar=True)
        self.log_epoch_metrics(self.eval_metrics["val_target"])

        source, target = (
            (torch.cat(self._features[d]) for d in DOMAINS) if all(self._features.values()) else (None, None)
        )
        self._features = {d: [] for d in DOMAINS}
        if source is not None and len(source) >= 4 and len(target) >= 4:
            self.log("val/proxy_a_distance", proxy_a_distance(source, target), sync_dist=True)
