"""Fine-tuning strategies: which parameters of an initialised model train, and in which mode.

A strategy is applied once to the LightningModule before training. Later strategies (LP-FT, partial and
gradual unfreezing, L2-SP) grow this interface; ``full`` and ``linear_probe`` need only freezing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transfuse.models.classifier import ImageClassifier


class Full:
    """Train every parameter (also what pretraining from scratch does)."""

    def apply(self, model: ImageClassifier) -> None:
        model.requires_grad_(True)
        model.frozen = ()


class LinearProbe:
    """Freeze the backbone, weights and BatchNorm statistics alike; only the head trains."""

    def apply(self, model: ImageClassifier) -> None:
        model.requires_grad_(True)
        model.backbone.requires_grad_(False)
        model.frozen = (model.backbone,)
