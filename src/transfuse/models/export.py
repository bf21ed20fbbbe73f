"""A trained classifier as one self-contained module for serving: pixels in, class logits out.

Training normalises images per batch in the datamodule; a served model cannot count on that, so
:class:`ServedClassifier` takes images as floats in [0, 1] (N, C, H, W at the backbone's size), normalises them
with the backbone's own mean and std, and returns logits. ``logger.log_model=true`` logs it as an MLflow model
(:func:`transfuse.tracking.artifacts.log_model`), which ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from transfuse.errors import ConfigError


class ServedClassifier(nn.Module):
    """Normalisation, backbone and head of a trained classifier, in eval mode.

    Args:
        backbone: the trained backbone (features from images).
        head: the trained head (logits from features).
        mean, std: per-channel normalisation of the backbone (its timm config).
        class_names: the classes, in the order of the logits.
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, mean: Sequence[float], std: Sequence[float], class_names: list[str]
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.class_names = backbone, head, list(class_names)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone((images - self.mean) / self.std))


def served(model: nn.Module, mean: Sequence[float], std: Sequence[float], class_names: list[str]) -> ServedClassifier:
    """The served form of a trained single-image classifier (a ``backbone`` and a ``head``)."""
    return ServedClassifier(model.backbone, model.head, mean, std, class_names)


def example_images(datamodule: object, mean: Sequence[float], std: Sequence[float], count: int = 2) -> Tensor:
    """``count`` test images as the served model takes them: the datamodule's evaluation transform (size,
    channels), its normalisation (``mean``, ``std``) undone, so floats in [0, 1]."""
    images, labels, *_ = next(iter(datamodule.test_dataloader()))  # a fused dataset adds each image's source
    images, _ = datamodule.on_after_batch_transfer((images[:count], labels[:count]), 0)
    if images.dim() != 4:
        raise ConfigError("logger.log_model serves single-image models; this one takes several images per sample")
    shape = (1, -1, 1, 1)
    return (images.float() * torch.tensor(list(std)).view(shape) + torch.tensor(list(mean)).view(shape)).clamp(0, 1)
