"""Fine-tuning strategies: which parameters of an initialised model train, when, at which learning rate.

A strategy is a Lightning callback that the model registers (``configure_callbacks``), so it can act at
the start of fit (L2-SP snapshot, AdaBN) and per epoch (LP-FT's switch, gradual unfreezing). Every strategy
shares three options: layer-wise learning-rate decay, a head learning-rate multiplier and the BatchNorm
policy. Blocks come from timm's own grouping (``group_matcher``), so CNNs and ViTs are treated alike.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from timm.models import group_modules, group_parameters
from torch import Tensor, nn

if TYPE_CHECKING:
    from transfuse.models.classifier import ImageClassifier

log = logging.getLogger(__name__)

BN_POLICIES = ("train", "freeze", "adabn")


def backbone_blocks(model: ImageClassifier) -> list[tuple[list[str], list[str]]]:
    """The backbone's blocks from input to output: (parameter names, module names) per timm group.

    Names are relative to the model (``backbone.model.layer1.0.conv1.weight``...).
    """
    timm_model = model.backbone.model
    matcher = timm_model.group_matcher(coarse=True)
    params = group_parameters(timm_model, matcher)
    modules = group_modules(timm_model, matcher)
    prefix = "backbone.model."
    return [
        ([prefix + n for n in params[i]], [prefix + n for n in modules.get(i, [])]) for i in sorted(params)
    ]


def _batchnorms(module: nn.Module) -> list[nn.Module]:
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
        cache_features: reuse the features of a frozen backbone across epochs (see ``ImageClassifier``).
    """

    frozen_backbone = False

    def __init__(
        self, layer_decay: float | None = None, head_lr_mult: float = 1.0, bn: str = "train", cache_features: bool = False
    ) -> None:
        if bn not in BN_POLICIES:
            raise ValueError(f"bn must be one of {BN_POLICIES}, got {bn!r}")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if head_lr_mult <= 0:
            raise ValueError(f"head_lr_mult must be positive, got {head_lr_mult}")
        self.layer_decay, self.head_lr_mult, self.bn, self.cache_features = layer_decay, head_lr_mult, bn, cache_features

    # --- freezing ---------------------------------------------------------------------------------------
    def apply(self, model: ImageClassifier) -> None:
        """Set the state training starts from (called once when the model is built)."""
        self.set_frozen_blocks(model, 0, frozen_head=False)

    def set_frozen_blocks(self, model: ImageClassifier, count: int, frozen_head: bool = False) -> None:
        """Freeze the first ``count`` backbone blocks (weights and BatchNorm statistics), train the rest."""
        blocks = backbone_blocks(model)
        model.requires_grad_(True)
        frozen: list[nn.Module] = []
        named = dict(model.named_modules())
        parameters = dict(model.named_parameters())
        for names, modules in blocks[:count]:
            for name in names:
                parameters[name].requires_grad_(False)
            frozen += [named[m] for m in modules]
        if frozen_head:
            model.head.requires_grad_(False)
            frozen.append(model.head)
        if self.bn in ("freeze", "adabn"):
            frozen += _batchnorms(model.backbone)
        model.frozen = tuple(frozen)
        model.backbone_frozen = count >= len(blocks) and not any(p.requires_grad for p in model.backbone.parameters())
        if model.trainer_attached:
            model.train(model.training)

    # --- optimisation ---------------------------------------------------------------------------------
    def lr_scales(self, model: ImageClassifier) -> dict[str, float]:
        """Learning-rate multiplier of every parameter name."""
        blocks = backbone_blocks(model)
        scales = {name: 1.0 for name, _ in model.named_parameters()}
        if self.layer_decay is not None:
            n = len(blocks)
            for i, (names, _) in enumerate(blocks):
                for name in names:
                    scales[name] = self.layer_decay ** (n - i)
        for name, _ in model.head.named_parameters(prefix="head"):
            scales[name] = self.head_lr_mult
        return scales

    def param_groups(self, model: ImageClassifier) -> list[dict[str, Any]]:
        """Parameters grouped by learning-rate multiplier (``lr_scale``), frozen ones included.

        Frozen parameters get no gradient, so the optimiser skips them; keeping them in lets a later phase
        unfreeze them without rebuilding the optimiser.
        """
        groups: dict[float, list[nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            groups.setdefault(self.lr_scales(model)[name] if False else None, [])  # placeholder, replaced below
        groups.clear()
        scales = self.lr_scales(model)
        for name, parameter in model.named_parameters():
            groups.setdefault(scales[name], []).append(parameter)
        return [{"params": params, "lr_scale": scale} for scale, params in sorted(groups.items())]

    def penalty(self, model: ImageClassifier) -> Tensor | None:
        """Extra loss term (None for most strategies)."""
        return None

    # --- Lightning hooks -----------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bn == "adabn":
            adapt_batchnorm(pl_module, trainer)

    def state_key(self) -> str:
        return f"finetune-{type(self).__name__}"


class Full(Strategy):
    """Every parameter trains (also what pretraining from scratch does)."""


class LinearProbe(Strategy):
    """Backbone frozen, weights and BatchNorm statistics alike; only the head trains."""

    frozen_backbone = True

    def __init__(self, cache_features: bool = True, **kwargs: Any) -> None:
        super().__init__(cache_features=cache_features, **kwargs)

    def apply(self, model: ImageClassifier) -> None:
        self.set_frozen_blocks(model, len(backbone_blocks(model)))
