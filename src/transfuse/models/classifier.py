"""The LightningModule of every classification stage: backbone -> head, cross-entropy, per-split metrics.

:class:`ImageClassifier` is the one template: it owns the training step, and a variant (domain adaptation,
distillation) only says how a training batch becomes logits, labels and extra loss terms
(:meth:`ImageClassifier.train_outputs`). So the fine-tuning strategy's penalty and the logging of every
term apply to every variant alike. What trains is changed through :meth:`ImageClassifier.freeze`, which a
strategy calls; the model never reads a strategy's internals beyond its public methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassF1Score

from transfuse.data.base import InMemoryImageDataModule
from transfuse.data.transforms import BatchTransform
from transfuse.finetune import Full, Strategy, batchnorms
from transfuse.models.backbones import Block
from transfuse.models.feature_cache import FeatureCache
from transfuse.models.summary import PredictionSummary, PredictionSummaryMetric

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


@dataclass
class TrainOutputs:
    """What one training batch gave: logits and labels for cross-entropy and metrics, plus extra loss terms.

    ``terms`` are unweighted (each is logged as ``train/<name>``); the model's ``loss_weights`` weigh them.
    """

    logits: Tensor
    labels: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class MeanLoss(Metric):
    """The criterion's mean over every image seen: summed per image, so uneven batches, and the uneven test shares
    of DDP processes, weigh each image once (Lightning's synced mean of logged values did not match one process)."""

    full_state_update = False

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.total += self.criterion(logits, labels).double() * len(labels)  # the criterion's batch mean
        self.count += len(labels)

    def compute(self) -> Tensor:
        return (self.total / self.count).float()


class ImageCount(Metric):
    """How many images a split's metrics saw (``<split>/<source>/images`` of a fused dataset's sources)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.count += len(labels)

    def compute(self) -> Tensor:
        return self.count.float()


def classification_metrics(
    num_classes: int, ece_bins: int = 15, criterion: nn.Module | None = None
) -> MetricCollection:
    """Accuracy, macro-F1 and expected calibration error, the figures every run reports, and with ``criterion``
    the mean loss (``loss``) of an evaluation split."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "ece": MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1"),
    }
    if criterion is not None:
        metrics["loss"] = MeanLoss(criterion)
    return MetricCollection(metrics)


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
        finetune: Strategy | None = None,
        class_names: Sequence[str] = (),
        label_smoothing: float = 0.0,
        ece_bins: int = 15,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["backbone", "head", "optimizer", "scheduler", "finetune", "alignment", "teacher"], logger=False
        )
        self.backbone, self.head = backbone, head
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.class_names = list(class_names)
        self.train_metrics = classification_metrics(len(self.class_names), ece_bins).clone(prefix="train/")
        evaluation = classification_metrics(len(self.class_names), ece_bins, self.criterion)
        self.val_metrics = evaluation.clone(prefix="val/")
        self.test_metrics = evaluation.clone(prefix="test/")
        #: confusion matrix and reliability bins of the current test pass, for the run's figures
        self.test_predictions = PredictionSummaryMetric(len(self.class_names), ece_bins)
        #: submodules kept in eval mode while training (frozen blocks, frozen BatchNorm statistics); see freeze()
        self.frozen: tuple[nn.Module, ...] = ()
        #: whether no backbone parameter trains right now; see freeze()
        self.backbone_frozen = False
        #: weight of each loss term (``class_loss`` and those of :meth:`train_outputs`); missing ones weigh 1
        self.loss_weights: dict[str, float] = {}
        #: first key segment -> logged name while a test pass is logged under another name (``test_last``)
        self._split_names: dict[str, str] = {}
        self.feature_cache = FeatureCache()
        #: how the layers differ from what backbone and head configs build (``channel_pruned``), saved in checkpoints
        self.architecture: str | None = None
        #: ``val/<source>/*``, ``test/<source>/*`` of a fused dataset's sources, keyed ``<split>_<index>``; see setup()
        self.domain_metrics = nn.ModuleDict()
        #: the datamodule's batch transform, taken in ``setup`` so the cache can prepare only the images it misses
        self.input_transform: BatchTransform | None = None
        self.finetune = finetune or Full()
        self.finetune.apply(self)

    # --- what trains ----------------------------------------------------------------------------------------
    def backbone_blocks(self) -> list[Block]:
        """The backbone's blocks from input to output, parameter and module names relative to this model."""
        return self.backbone.blocks("backbone.")

    def freeze(self, blocks: int, head: bool = False, batchnorm: bool = False) -> None:
        """Train everything except the first ``blocks`` backbone blocks (weights and statistics alike),
        the head when ``head``, and every backbone BatchNorm's statistics when ``batchnorm``."""
        all_blocks = self.backbone_blocks()
        self.requires_grad_(True)
        named = dict(self.named_modules())
        parameters = dict(self.named_parameters())
        frozen: list[nn.Module] = []
        for block in all_blocks[:blocks]:
            for name in block.params:
                parameters[name].requires_grad_(False)
            frozen += [named[m] for m in block.modules]
        if blocks >= len(all_blocks):
            frozen.append(self.backbone)
        if head:
            self.head.requires_grad_(False)
            frozen.append(self.head)
        if batchnorm:
            frozen += batchnorms(self.backbone)
        self.frozen = tuple(frozen)
        self.backbone_frozen = not any(p.requires_grad for p in self.backbone.parameters())
        self.train(self.training)

    @property
    def caching(self) -> bool:
        """Whether backbone features come from the cache (frozen backbone and a strategy that asks for it)."""
        return self.finetune.cache_features and self.backbone_frozen

    @property
    def wants_augmentation(self) -> bool:
        """The datamodule augments training batches only when features are not cached."""
        return not self.caching

    @property
    def raw_inputs(self) -> bool:
        """Whether the datamodule hands over its uint8 images untransformed: the cache keys them cheaply and
        transforms only the ones it has not seen."""
        return self.caching and self.input_transform is not None

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        self.input_transform = getattr(datamodule, "transform", None)
        if isinstance(datamodule, InMemoryImageDataModule) and datamodule.domain_names and not self.domain_metrics:
            self.track_domains(datamodule.domain_names)

    def track_domains(self, names: Sequence[str]) -> None:
        """Metrics per source of a fused dataset, for evaluation batches that carry each image's source index."""
        evaluation = classification_metrics(len(self.class_names), self.hparams.ece_bins, self.criterion)
        evaluation.add_metrics({"images": ImageCount()})
        self.domain_metrics = nn.ModuleDict(
            {
                f"{split}_{i}": evaluation.clone(prefix=f"{split}/{name}/")
                for split in ("val", "test")
                for i, name in enumerate(names)
            }
        ).to(self.device)

    def forward(self, images: Tensor) -> Tensor:
        if not self.caching:
            features = self.backbone(images)
        elif images.dtype == torch.uint8 and self.input_transform is not None:
            transform = self.input_transform
            features = self.feature_cache(
                self.backbone, images, lambda x: transform(x, train=False), prepare_key=transform.key
            )
        else:
            features = self.feature_cache(self.backbone, images)
        return self.head(features)

    def configure_callbacks(self) -> list[Callback]:
        # Lightning asks again for test after fit; the strategy is registered once.
        registered = self._trainer is not None and any(c is self.finetune for c in self.trainer.callbacks)
        return [] if registered else [self.finetune]

    def on_fit_start(self) -> None:
        if self.finetune.cache_features:
            self.feature_cache.check_weights(self.backbone)

    def on_fit_end(self) -> None:
        if self.feature_cache.hits or self.feature_cache.misses:
            log.debug("feature cache: %d hits, %d misses", self.feature_cache.hits, self.feature_cache.misses)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def on_train_start(self) -> None:
        # Lightning keeps whatever train/eval modes it finds, so apply the frozen modules' eval mode here.
        self.train()

    def train_outputs(self, batch: Any) -> TrainOutputs:
        """The hook a variant overrides: a training batch -> logits, labels and extra (unweighted) loss terms."""
        images, labels = batch
        return TrainOutputs(self(images), labels)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        out = self.train_outputs(batch)
        n = len(out.labels)
        terms = {"class_loss": self.criterion(out.logits, out.labels), **out.terms}
        penalty = self.finetune.penalty(self)
        if penalty is not None:
            terms["penalty"] = penalty
        loss = sum(self.loss_weights.get(name, 1.0) * term for name, term in terms.items())
        hard = out.labels.argmax(1) if out.labels.ndim == 2 else out.labels  # mixup's soft targets: their top class
        self.train_metrics.update(out.logits.detach(), hard)
        # sync_dist: under DDP the logged loss is the mean over all processes (a no-op in one process)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        if len(terms) > 1:  # with cross-entropy alone, train/class_loss would repeat train/loss
            for name, term in terms.items():
                self.log(f"train/{name}", term, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def _eval_step(self, batch: tuple[Tensor, ...], metrics: MetricCollection, split: str) -> None:
        images, labels, *domains = batch  # a fused dataset's batches also say each image's source
        logits = self(images)
        metrics.update(logits.detach(), labels)
        if domains and self.domain_metrics:
            for d in domains[0].unique().tolist():
                chosen = domains[0] == d
                self.domain_metrics[f"{split}_{d}"].update(logits.detach()[chosen], labels[chosen])
        if split == "test":
            self.test_predictions.update(logits, labels)

    def logged_name(self, key: str) -> str:
        """The name a metric is logged under: ``test/acc`` becomes ``test_last/acc`` inside :meth:`splits_renamed`."""
        split, _, rest = key.partition("/")
        return f"{self._split_names[split]}/{rest}" if rest and split in self._split_names else key

    @contextmanager
    def splits_renamed(self, names: Mapping[str, str]) -> Iterator[None]:
        """Log the splits in ``names`` under other names meanwhile (``{"test": "test_last"}`` to test the
        last epoch's weights beside the best checkpoint's)."""
        self._split_names = dict(names)
        try:
            yield
        finally:
            self._split_names = {}

    def log_epoch_metrics(self, metrics: MetricCollection, prog_bar: bool = False) -> None:
        """Log a split's metrics once, at the end of its epoch, and reset them.

        Handing the metric objects to ``self.log`` every step would make Lightning track them per step, which
        costs about a millisecond a step: as much as a cached linear-probe step itself.
        """
        if any(metric.update_called for metric in metrics.values()):
            values = {self.logged_name(k): v for k, v in metrics.compute().items()}  # synced over DDP processes
            self.log_dict(values, prog_bar=prog_bar, sync_dist=True)  # equal on every rank: the mean changes nothing
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics(self.train_metrics)

    def log_domain_metrics(self, split: str) -> None:
        for key, metrics in self.domain_metrics.items():
            if key.startswith(f"{split}_"):
                self.log_epoch_metrics(metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics(self.val_metrics, prog_bar=True)
        self.log_domain_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.test_predictions.reset()  # each test pass (best weights, last weights...) has its own summary

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics(self.test_metrics)
        self.log_domain_metrics("test")
        summary = self.test_summary  # counted over every process of a DDP job: each test image once
        if summary is not None:
            self.log(self.logged_name("test/images"), float(summary.total), sync_dist=True)

    @property
    def test_summary(self) -> PredictionSummary | None:
        """Confusion matrix and reliability bins of the latest test pass; None before any test batch."""
        return self.test_predictions.compute() if self.test_predictions.update_called else None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.finetune.param_groups(self))
        for group in optimizer.param_groups:  # each group's rate is the configured one times its multiplier
            group["lr"] *= group["lr_scale"]
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["transfuse"] = {"class_names": self.class_names}
        if self.architecture is not None:  # e.g. channel_pruned: loading resizes the layers to the saved shapes
            checkpoint["transfuse"]["architecture"] = self.architecture
