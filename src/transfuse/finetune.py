"""Fine-tuning strategies: which parameters of an initialised model train, when, at which learning rate.

A strategy is a Lightning callback that the model registers (``configure_callbacks``), so it can act at
the start of fit (L2-SP snapshot, AdaBN) and per epoch (LP-FT's switch, gradual unfreezing). Every strategy
shares three options: layer-wise learning-rate decay, a head learning-rate multiplier and the BatchNorm
policy. A strategy changes what trains only through the model's own methods (:class:`Finetunable`), so this
module does not import the model: blocks come from the backbone (timm's grouping), freezing from the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from transfuse.errors import ConfigError

log = logging.getLogger(__name__)

BN_POLICIES = ("train", "freeze", "adabn")


class BlockNames(Protocol):
    """One backbone block: its parameter names and module names (see ``transfuse.models.backbones.Block``)."""

    params: list[str]
    modules: list[str]


class Finetunable(Protocol):
    """What a strategy needs of a model (:class:`~transfuse.models.ImageClassifier` provides it)."""

    backbone: nn.Module
    head: nn.Module

    def backbone_blocks(self) -> Sequence[BlockNames]: ...

    def freeze(self, blocks: int, head: bool = False, batchnorm: bool = False) -> None: ...

    def named_parameters(self) -> Any: ...


def batchnorms(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of ``module`` (the layers AdaBN and ``bn=freeze`` act on)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class Strategy(Callback):
    """Full fine-tuning plus the options every strategy shares.

    Args:
        layer_decay: learning rate of block ``i`` of ``n`` is ``lr * layer_decay ** (n - i)`` (the head has
            ``n``); None disables layer-wise decay.
        head_lr_mult: the head's learning rate is ``lr * head_lr_mult``.
        bn: ``train`` updates BatchNorm statistics as usual; ``freeze`` keeps the source statistics;
            ``adabn`` re-estimates them on the target training images (labels unused) before training and
            then keeps them.
        cache_features: reuse the features of a frozen backbone across epochs (see ``Finetunable``).
    """

    def __init__(
        self,
        layer_decay: float | None = None,
        head_lr_mult: float = 1.0,
        bn: str = "train",
        cache_features: bool = False,
    ) -> None:
        if bn not in BN_POLICIES:
            raise ConfigError(f"finetune.bn must be one of {BN_POLICIES}, got {bn!r}")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"finetune.layer_decay must be in (0, 1], got {layer_decay}")
        if head_lr_mult <= 0:
            raise ConfigError(f"finetune.head_lr_mult must be positive, got {head_lr_mult}")
        self.layer_decay, self.head_lr_mult, self.bn, self.cache_features = (
            layer_decay,
            head_lr_mult,
            bn,
            cache_features,
        )
        self._bn_adapted = False

    # --- freezing ---------------------------------------------------------------------------------------
    def apply(self, model: Finetunable) -> None:
        """Set the state training starts from (called once when the model is built)."""
        self.freeze(model, 0)

    def freeze(self, model: Finetunable, blocks: int, head: bool = False) -> None:
        """Freeze the first ``blocks`` backbone blocks (and the head), with this strategy's BatchNorm policy."""
        model.freeze(blocks, head=head, batchnorm=self.bn in ("freeze", "adabn"))

    # --- optimisation ---------------------------------------------------------------------------------
    def lr_scales(self, model: Finetunable) -> dict[str, float]:
        """Learning-rate multiplier of every parameter name."""
        blocks = model.backbone_blocks()
        scales = {name: 1.0 for name, _ in model.named_parameters()}
        if self.layer_decay is not None:
            n = len(blocks)
            for i, block in enumerate(blocks):
                for name in block.params:
                    scales[name] = self.layer_decay ** (n - i)
        for name, _ in model.head.named_parameters(prefix="head"):
            scales[name] = self.head_lr_mult
        return scales

    def param_groups(self, model: Finetunable) -> list[dict[str, Any]]:
        """Parameters grouped by learning-rate multiplier (``lr_scale``), frozen ones included.

        Frozen parameters get no gradient, so the optimiser skips them; keeping them in lets a later phase
        unfreeze them without rebuilding the optimiser.
        """
        groups: dict[float, list[nn.Parameter]] = {}
        scales = self.lr_scales(model)
        for name, parameter in model.named_parameters():
            groups.setdefault(scales[name], []).append(parameter)
        return [{"params": params, "lr_scale": scale} for scale, params in sorted(groups.items())]

    def penalty(self, model: Finetunable) -> Tensor | None:
        """Extra loss term (None for most strategies)."""
        return None

    def check_schedule(self, max_epochs: int) -> None:
        """Refuse a fit too short for the strategy to do what it says (checked before the run opens)."""

    # --- Lightning hooks -----------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bn == "adabn":
            adapt_batchnorm(pl_module, trainer)
            self._bn_adapted = True

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # without a fit (stage=evaluate), AdaBN is the test-time baseline: source weights, target statistics
        if self.bn == "adabn" and not self._bn_adapted:
            adapt_batchnorm(pl_module, trainer)
            self._bn_adapted = True


class Full(Strategy):
    """Every parameter trains (also what pretraining from scratch does)."""


class LinearProbe(Strategy):
    """Backbone frozen, weights and BatchNorm statistics alike; only the head trains."""

    def __init__(self, cache_features: bool = True, **kwargs: Any) -> None:
        super().__init__(cache_features=cache_features, **kwargs)

    def apply(self, model: Finetunable) -> None:
        self.freeze(model, len(model.backbone_blocks()))


class LPFT(Strategy):
    """Linear probe for ``probe_epochs``, then full fine-tuning from the probed head (Kumar et al., 2022).

    Probing first keeps a random head from sending large gradients into, and distorting, the pretrained
    features during the first steps of fine-tuning.
    """

    def __init__(self, probe_epochs: int = 5, cache_features: bool = True, **kwargs: Any) -> None:
        super().__init__(cache_features=cache_features, **kwargs)
        if probe_epochs < 1:
            raise ConfigError(f"finetune.probe_epochs must be >= 1, got {probe_epochs}")
        self.probe_epochs = probe_epochs

    def apply(self, model: Finetunable) -> None:
        self.freeze(model, len(model.backbone_blocks()))

    def check_schedule(self, max_epochs: int) -> None:
        if max_epochs <= self.probe_epochs:
            raise ConfigError(
                f"finetune=lp_ft probes for probe_epochs={self.probe_epochs} epochs, but "
                f"trainer.max_epochs={max_epochs}: "
                "the backbone would never be fine-tuned; raise trainer.max_epochs or lower finetune.probe_epochs"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.probe_epochs:
            log.info("LP-FT: epoch %d, the backbone is unfrozen", trainer.current_epoch)
            self.freeze(pl_module, 0)


class Partial(Strategy):
    """The first ``freeze_blocks`` blocks of the backbone (stem first) stay frozen; the rest trains."""

    def __init__(self, freeze_blocks: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if freeze_blocks < 0:
            raise ConfigError(f"finetune.freeze_blocks must be >= 0, got {freeze_blocks}")
        self.freeze_blocks = freeze_blocks

    def apply(self, model: Finetunable) -> None:
        blocks = len(model.backbone_blocks())
        if self.freeze_blocks > blocks:
            name = model.backbone.name
            raise ConfigError(f"finetune.freeze_blocks={self.freeze_blocks}, but backbone {name} has {blocks} blocks")
        self.freeze(model, self.freeze_blocks)


class Gradual(Strategy):
    """Start with the head only and unfreeze one more block from the top every ``unfreeze_every`` epochs."""

    def __init__(self, unfreeze_every: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if unfreeze_every < 1:
            raise ConfigError(f"finetune.unfreeze_every must be >= 1, got {unfreeze_every}")
        self.unfreeze_every = unfreeze_every

    def frozen_at(self, epoch: int, blocks: int) -> int:
        """Blocks still frozen at ``epoch`` (all of them at epoch 0)."""
        return max(blocks - epoch // self.unfreeze_every, 0)

    def apply(self, model: Finetunable) -> None:
        self.freeze(model, len(model.backbone_blocks()))

    def check_schedule(self, max_epochs: int) -> None:
        if max_epochs <= self.unfreeze_every:
            raise ConfigError(
                f"finetune=gradual unfreezes a block every {self.unfreeze_every} epochs, but trainer.max_epochs="
                f"{max_epochs}: no block would ever train (a linear probe); raise trainer.max_epochs or lower "
                "finetune.unfreeze_every"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        blocks = len(pl_module.backbone_blocks())
        frozen = self.frozen_at(trainer.current_epoch, blocks)
        if frozen != self.frozen_at(trainer.current_epoch - 1, blocks) or trainer.current_epoch == 0:
            log.info("gradual: epoch %d, %d of %d blocks frozen", trainer.current_epoch, frozen, blocks)
            self.freeze(pl_module, frozen)


class L2SP(Strategy):
    """Full fine-tuning with a pull toward the starting weights (Li et al., 2018, "L2-SP").

    The loss gains ``alpha/2 * ||w - w0||^2`` over the backbone (``w0``: its weights when fit starts, i.e. the
    source) and ``beta/2 * ||w||^2`` over the head, which is new. Set ``optimizer.weight_decay=0`` so that
    decay toward zero does not fight the pull toward the source.
    """

    def __init__(self, alpha: float = 0.01, beta: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if alpha < 0 or beta < 0:
            raise ConfigError(f"finetune.alpha and finetune.beta must be >= 0, got {alpha} and {beta}")
        self.alpha, self.beta = alpha, beta
        self.source: dict[str, Tensor] = {}

    def snapshot(self, model: Finetunable) -> None:
        """Remember the current backbone weights as the point the penalty pulls toward."""
        self.source = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.snapshot(pl_module)

    def penalty(self, model: Finetunable) -> Tensor:
        if not self.source:
            self.snapshot(model)
        pull = sum(((p - self.source[n].to(p.device)) ** 2).sum() for n, p in model.backbone.named_parameters())
        decay = sum((p**2).sum() for p in model.head.parameters())
        return 0.5 * self.alpha * pull + 0.5 * self.beta * decay


@torch.no_grad()
def adapt_batchnorm(model: LightningModule, trainer: Trainer, max_batches: int | None = None) -> int:
    """AdaBN (Li et al., 2016): replace BatchNorm statistics by those of the target training images.

    Runs the backbone over the training loader in train mode with a cumulative average (``momentum=None``);
    labels are never read and no weight changes. Returns the number of images seen.
    """
    datamodule = trainer.datamodule
    norms = batchnorms(model.backbone)
    if not norms or datamodule is None:
        return 0
    loader = datamodule.train_dataloader()
    if not isinstance(loader, DataLoader):
        raise ConfigError("finetune.bn=adabn needs a single training loader; stage=adapt pairs two domains")
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, _ = datamodule.prepare((images.to(model.device), labels.to(model.device)), train=False)
        model.backbone(images)
        seen += len(images)
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    log.info("AdaBN: BatchNorm statistics of %d layers re-estimated on %d target images", len(norms), seen)
    return seen
