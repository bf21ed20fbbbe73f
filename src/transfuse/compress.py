"""Compressing a trained classifier by pruning (``stage=compress compress=magnitude|channel``), as pure functions
plus thin configurable classes.

Magnitude pruning zeroes the ``ratio`` share of all convolution and linear weights (backbone and head together)
of smallest magnitude, with :func:`torch.nn.utils.prune.global_unstructured`, made permanent at once
(:func:`torch.nn.utils.prune.remove`): the checkpoint keeps the model's own tensor names, so every stage loads it
as any other. While the pruned model fine-tunes (``stage.fit=true``), :class:`MagnitudePruning` puts the pruned
weights back to zero after every optimiser step, so the sparsity logged (``cost/nonzero_params``) is the one
asked for.

Channel pruning removes whole convolution channels (and what depends on them: BatchNorm, the next layer's
inputs, residual partners), with the ``torch-pruning`` library: the network gets narrower, so it computes
fewer FLOPs and runs faster on any hardware, where zeros only pay off with sparse kernels. Its checkpoints
record ``architecture: channel_pruned``, and loading resizes the layers of a freshly built model to the saved
shapes (:func:`transfuse.weights.loading.resize_to`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback
from torch import Tensor, nn
from torch.nn.utils import prune

from transfuse.errors import ConfigError
from transfuse.weights.loading import CHANNEL_PRUNED

log = logging.getLogger(__name__)

#: the layers whose weights pruning considers
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{parameter name: (module, "weight")}`` of every convolution and linear layer of ``model``."""
    return {
        f"{name}.weight" if name else "weight": (m, "weight")
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE)
    }


def check_ratio(ratio: float) -> float:
    """A pruning ratio is a share of the weights in [0, 1): 1 would leave no network."""
    if not isinstance(ratio, int | float) or not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"compress.ratio must be in [0, 1) (the share of weights removed), got {ratio!r}")
    return float(ratio)


@torch.no_grad()
def magnitude_prune(model: nn.Module, ratio: float) -> dict[str, Tensor]:
    """Zero the ``ratio`` share of all convolution and linear weights of smallest absolute value, ranked over
    the whole model at once (global unstructured L1 pruning), permanently. Returns the masks (1 = kept) by
    parameter name; exactly ``round(ratio * n)`` of the ``n`` weights are pruned.

    >>> net = nn.Linear(4, 2)
    >>> masks = magnitude_prune(net, 0.25)
    >>> int((net.weight == 0).sum()), int(masks["weight"].sum())
    (2, 6)
    """
    ratio = check_ratio(ratio)
    weights = prunable_weights(model)
    if not weights:
        raise ConfigError(f"{type(model).__name__} has no convolution or linear layer to prune")
    prune.global_unstructured(list(weights.values()), pruning_method=prune.L1Unstructured, amount=ratio)
    masks = {}
    for name, (module, attribute) in weights.items():
        masks[name] = getattr(module, f"{attribute}_mask").detach().clone()
        prune.remove(module, attribute)  # permanent: weight_orig * mask becomes the plain weight again
    return masks


def sparsity(model: nn.Module) -> float:
    """The share of convolution and linear weights that are zero."""
    weights = [getattr(m, a) for m, a in prunable_weights(model).values()]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


class MagnitudePruning(Callback):
    """``compress=magnitude``: global unstructured magnitude pruning of ``ratio`` of the weights.

    Args:
        ratio: the share of convolution and linear weights removed, in [0, 1).
    """

    def __init__(self, ratio: float = 0.5) -> None:
        self.ratio = check_ratio(ratio)
        self.masks: dict[str, Tensor] = {}

    def apply(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Prune ``model`` in place (``example``, the input it takes, is not needed by magnitude pruning)."""
        self.masks = magnitude_prune(model, self.ratio)
        log.info("pruned %.1f%% of the convolution and linear weights by magnitude", 100 * sparsity(model))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, *args: Any) -> None:
        parameters = dict(pl_module.named_parameters())
        for name, mask in self.masks.items():
            parameters[name].mul_(mask.to(parameters[name].device))


def channel_prune(net: nn.Module, example: Tensor, ratio: float, keep: list[nn.Module]) -> None:
    """Remove ``ratio`` of the output channels of every prunable layer of ``net`` but those of ``keep`` (the
    classifier: its outputs are the classes), the channels of smallest L2 norm first, in place; ``example`` is an
    input ``net`` takes (its graph is traced on it)."""
    import torch_pruning as tp

    ratio = check_ratio(ratio)
    was_training = net.training
    net.eval()
    pruner = tp.pruner.MetaPruner(
        net, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=keep
    )
    pruner.step()
    net.train(was_training)


class _Network(nn.Module):
    """Backbone then head, the part of a classifier that pruning traces (not its losses or metrics)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


class ChannelPruning(Callback):
    """``compress=channel``: structured pruning of ``ratio`` of the channels of every layer but the classifier.

    Args:
        ratio: the share of each layer's output channels removed, in [0, 1).
    """

    def __init__(self, ratio: float = 0.5) -> None:
        self.ratio = check_ratio(ratio)

    def apply(self, model: nn.Module, example: Tensor) -> None:
        """Prune ``model`` (a classifier with ``backbone``, ``head`` and ``head.classifier``) in place, traced on
        ``example``, and mark it ``channel_pruned`` so that its checkpoints reload."""
        before = sum(p.numel() for p in model.parameters())
        channel_prune(_Network(model.backbone, model.head), example[:2], self.ratio, [model.head.classifier])
        model.architecture = CHANNEL_PRUNED
        after = sum(p.numel() for p in model.parameters())
        log.info("channel pruning kept %d of %d parameters", after, before)
