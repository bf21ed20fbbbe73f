"""Batch-level image transforms that run on the device after the batch is transferred.

Datasets are stored as uint8 tensors at their native size; converting, resizing, augmenting and normalising a
whole batch at once avoids the per-sample PIL round-trip of torchvision's transforms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from transfuse.errors import ConfigError


def adapt_channels(x: Tensor, channels: int) -> Tensor:
    """Grey to RGB by repetition, RGB to grey by luminance; other counts must already match."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


def resize(x: Tensor, size: int) -> Tensor:
    """Resize a float batch to ``size`` x ``size`` (antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    shrinking = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


class RandomAffine:
    """Per-sample random rotation, scale, translation and horizontal flip, applied with one ``grid_sample``.

    Args:
        degrees: maximum absolute rotation.
        translate: maximum shift as a fraction of the image side.
        scale: (min, max) zoom factor.
        hflip: probability of a horizontal flip (0 for digits, 0.5 for natural images).
        padding: what fills pixels moved in from outside: ``zeros``, ``border`` or ``reflection``.
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: Sequence[float] = (1.0, 1.0),
        hflip: float = 0.0,
        padding: str = "zeros",
    ) -> None:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        if not 0.0 <= hflip <= 1.0:
            raise ConfigError(f"hflip is a probability, got {hflip}")
        self.degrees, self.translate, self.scale, self.hflip, self.padding = (
            degrees,
            translate,
            tuple(scale),
            hflip,
            padding,
        )

    def __call__(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        opts = {"device": x.device, "dtype": x.dtype}
        angle = (torch.rand(b, **opts) * 2 - 1) * math.radians(self.degrees)
        zoom = torch.empty(b, **opts).uniform_(*self.scale)
        shift = (torch.rand(b, 2, **opts) * 2 - 1) * self.translate * 2  # grid coordinates span [-1, 1]
        flip = torch.where(torch.rand(b, **opts) < self.hflip, -1.0, 1.0).to(x.dtype)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], dim=1), torch.stack([sin * flip, cos, shift[:, 1]], dim=1)],
            dim=1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)


class BatchTransform:
    """uint8 batch -> float, channels and size of the backbone, optional augmentation, normalisation."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: RandomAffine | None = None,
    ) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length: {list(mean)} vs {list(std)}")
        if len(mean) not in (1, channels):
            raise ValueError(f"{len(mean)} normalisation values for {channels} channels")
        self.image_size, self.channels, self.augment = image_size, channels, augment
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def key(self) -> bytes:
        """Names the deterministic (evaluation) transform, so cached features of one never serve another."""
        settings = (self.image_size, self.channels, self.mean.flatten().tolist(), self.std.flatten().tolist())
        return repr(settings).encode()

    def __call__(self, images: Tensor, train: bool) -> Tensor:
        if images.ndim == 5:  # [B, V, C, H, W]: every view alike (augmented independently)
            return self(images.flatten(0, 1), train).unflatten(0, images.shape[:2])
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        x = resize(adapt_channels(x, self.channels), self.image_size)
        if train and self.augment is not None:
            x = self.augment(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
