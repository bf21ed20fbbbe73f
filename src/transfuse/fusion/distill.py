"""Knowledge distillation of a fused teacher into one student (Hinton et al. 2015).

The student trains on the datamodule's raw uint8 batches: it augments its own view, while the teacher (the
members, each through its own transform) scores the clean images. The loss mixes the temperature-softened
KL divergence to the teacher (scaled by T^2 so its gradients keep their size) with cross-entropy on labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from transfuse.errors import ConfigError
from transfuse.models.classifier import ImageClassifier, TrainOutputs


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


class DistillClassifier(ImageClassifier):
    """An :class:`ImageClassifier` whose training loss also pulls it toward a teacher's soft predictions.

    Args:
        teacher: raw uint8 images -> teacher logits (kept out of the module tree, so out of checkpoints).
        temperature: softening temperature T of both distributions.
        alpha: weight of the distillation term; ``1 - alpha`` weighs cross-entropy on the labels.
        **kwargs: as for :class:`ImageClassifier`.
    """

    def __init__(
        self, teacher: Callable[[Tensor], Tensor], temperature: float = 4.0, alpha: float = 0.9, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation needs temperature > 0 and 0 <= alpha <= 1, got {temperature} and {alpha}")
        self._teacher = (teacher,)  # a tuple hides it from nn.Module registration
        self.temperature, self.alpha = temperature, alpha
        self.loss_weights = {"distill_loss": alpha, "class_loss": 1.0 - alpha}

    @property
    def raw_inputs(self) -> bool:
        return self.input_transform is not None

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8 and self.input_transform is not None:
            images = self.input_transform(images, train=False)
        return self.head(self.backbone(images))

    def train_outputs(self, batch: tuple[Tensor, Tensor]) -> TrainOutputs:
        """The student sees its own augmented view, the teacher the clean raw images; the distillation term
        weighs ``alpha`` and cross-entropy ``1 - alpha`` (set in ``loss_weights``)."""
        raw, labels = batch
        logits = self.head(self.backbone(self.input_transform(raw, train=True)))
        with torch.no_grad():
            teacher = self._teacher[0](raw).to(logits.device)
        return TrainOutputs(logits, labels, {"distill_loss": distillation_loss(logits, teacher, self.temperature)})
