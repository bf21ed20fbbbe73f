"""Alignment methods of ``stage=adapt``, each ``method(source_features, target_features, progress) -> loss``.

Configs build them as partials (``conf/adapt/``); :class:`~transfuse.adapt.model.AdaptClassifier` completes
them with the backbone's feature width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transfuse.adapt.losses import (
    DomainDiscriminator,
    GradientReversalLayer,
    coral_loss,
    dann_loss,
    ganin_lambda,
    mmd_loss,
)


class SourceOnly(nn.Module):
    """No alignment: the source-only baseline, trained through exactly the same pipeline and budget as the
    methods it is compared with (the target images pass through the backbone but change nothing)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()

    def forward(self, source: Tensor, target: Tensor, progress: float) -> Tensor:
        return torch.zeros((), device=source.device, dtype=source.dtype)


class DANN(nn.Module):
    """Domain-adversarial training (Ganin et al., 2016): a discriminator behind a gradient reversal layer.

    The reversal strength follows Ganin's ramp ``2 / (1 + exp(-gamma * p)) - 1`` over training progress ``p``,
    so the untrained discriminator does not disturb the features early on.
    """

    def __init__(self, in_features: int, weight: float = 1.0, hidden: int = 256, gamma: float = 10.0) -> None:
        super().__init__()
        self.weight, self.gamma = weight, gamma
        self.discriminator = DomainDiscriminator(in_features, hidden)
        self.reversal = GradientReversalLayer(0.0)

    def forward(self, source: Tensor, target: Tensor, progress: float) -> Tensor:
        self.reversal.lambda_ = ganin_lambda(progress, self.gamma)
        return self.weight * dann_loss(source, target, self.discriminator, self.reversal)


class CORAL(nn.Module):
    """Deep CORAL (Sun and Saenko, 2016): match the second-order statistics of the two domains."""

    def __init__(self, in_features: int, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, source: Tensor, target: Tensor, progress: float) -> Tensor:
        return self.weight * coral_loss(source, target)


class MMD(nn.Module):
    """Multi-kernel maximum mean discrepancy on the features, as in DAN (Long et al., 2015)."""

    def __init__(self, in_features: int, weight: float = 1.0, kernel_mul: float = 2.0, kernel_num: int = 5) -> None:
        super().__init__()
        self.weight, self.kernel_mul, self.kernel_num = weight, kernel_mul, kernel_num

    def forward(self, source: Tensor, target: Tensor, progress: float) -> Tensor:
        return self.weight * mmd_loss(source, target, kernel_mul=self.kernel_mul, kernel_num=self.kernel_num)
