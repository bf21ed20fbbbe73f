"""Procedurally drawn shapes with a controllable domain shift, deterministic by seed.

Fast tests and domain-adaptation checks need a source and a target that share classes but differ in a known
way: here the shift is in colour, background texture, noise and object scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.errors import ConfigError

SHAPES = ("disk", "square", "triangle", "cross", "ring", "diamond")


def _shape_mask(name: str, u: Tensor, v: Tensor) -> Tensor:
    """Soft-edged mask of a unit shape in local coordinates ``u, v`` (object spans about [-1, 1])."""
    r = torch.sqrt(u**2 + v**2)
    distance = {
        "disk": r - 1.0,
        "square": torch.maximum(u.abs(), v.abs()) - 0.85,
        "triangle": torch.maximum(v - 0.8, (-v * 0.5 + u.abs() * math.sqrt(3) / 2) - 0.4),
        "cross": torch.minimum(
            torch.maximum(u.abs() - 0.3, v.abs() - 1.0), torch.maximum(u.abs() - 1.0, v.abs() - 0.3)
        ),
        "ring": (r - 0.75).abs() - 0.25,
        "diamond": u.abs() + v.abs() - 1.1,
    }[name]
    return torch.sigmoid(-distance * 12.0)


def draw_shapes(
    labels: Tensor,
    size: int,
    generator: torch.Generator,
    scale: Sequence[float] = (0.5, 0.8),
    foreground: Sequence[float] | None = (1.0, 1.0, 1.0),
    background: Sequence[float] = (0.0, 0.0, 0.0),
    texture: float = 0.0,
    noise: float = 0.0,
) -> Tensor:
    """Draw one shape per label; returns float images ``[N, 3, size, size]`` in [0, 1].

    Args:
        labels: class index per image (index into ``SHAPES``).
        size: image side in pixels.
        generator: the only source of randomness, so a seed fixes every pixel.
        scale: (min, max) object radius as a fraction of half the image.
        foreground: RGB colour of the shape, or None for a random colour per image.
        background: RGB colour behind the shape.
        texture: amplitude of random diagonal stripes on the background.
        noise: standard deviation of Gaussian pixel noise.
    """
    n = len(labels)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    radius = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    centre = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - radius).unsqueeze(1) * 0.8
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    dx = x.unsqueeze(0) - centre[:, 0, None, None]
    dy = y.unsqueeze(0) - centre[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / radius[:, None, None]
    v = (-sin * dx + cos * dy) / radius[:, None, None]
    mask = torch.empty(n, size, size)
    for k, name in enumerate(SHAPES):
        chosen = labels == k
        if chosen.any():
            mask[chosen] = _shape_mask(name, u[chosen], v[chosen])
    if foreground is None:
        fg = torch.rand(n, 3, generator=generator) * 0.7 + 0.3
    else:
        fg = torch.tensor(list(foreground), dtype=torch.float32).expand(n, 3)
    bg = torch.tensor(list(background), dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, size, size)
    if texture > 0:
        freq = torch.rand(n, 1, 1, 1, generator=generator) * 6 + 4
        phase = torch.rand(n, 1, 1, 1, generator=generator) * 2 * math.pi
        bg = bg + texture * torch.sin(freq * math.pi * (x + y) + phase)
    image = mask.unsqueeze(1) * fg[:, :, None, None] + (1 - mask.unsqueeze(1)) * bg
    if noise > 0:
        image = image + noise * torch.randn(image.shape, generator=generator)
    return image.clamp(0.0, 1.0)


class SyntheticShapes(InMemoryImageDataModule):
    """Shape classes drawn in one domain style; a source and a target preset differ only in the style.

    Args:
        num_classes: how many of the shapes in ``SHAPES`` to use (2 to 6).
        per_class: images per class before splitting.
        native_size: side the images are drawn at (the batch transform resizes them for the backbone).
        seed: fixes every pixel; different domains should use different seeds.
        style: keyword arguments of :func:`draw_shapes` describing the domain.
    """

    def __init__(
        self,
        num_classes: int = 4,
        per_class: int = 100,
        native_size: int = 32,
        seed: int = 0,
        style: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 2 <= num_classes <= len(SHAPES):
            raise ConfigError(f"num_classes must be between 2 and {len(SHAPES)}, got {num_classes}")
        self.num_shapes, self.per_class, self.native_size, self.seed = num_classes, per_class, native_size, seed
        self.style = dict(style or {})

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        generator = torch.Generator().manual_seed(self.seed)
        labels = torch.arange(self.num_shapes).repeat_interleave(self.per_class)
        images = draw_shapes(labels, self.native_size, generator, **self.style)
        pixels = (images * 255).round().to(torch.uint8)
        return {"train": ImageTensors(pixels, labels)}, list(SHAPES[: self.num_shapes])
