"""Multi-input datasets: several images of each sample, stored as uint8 ``[N, V, C, H, W]``.

``MultiView`` derives views from any single-view preset (a photo and its edge map, its inverse, a flip);
``NoisyMNIST`` is the two-view benchmark of multi-view learning (Wang et al. 2015). Batches keep the view
axis through the device-side transform, and multi-input models (:mod:`transfuse.models.backbones`) read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.data.image_folder import check_on_empty_class, refuse_empty, scan_classes, split_roots
from transfuse.data.packaged import DIGIT_CLASSES, mnist5k_arrays
from transfuse.data.sources import FileSource
from transfuse.data.streamable import Catalog, StreamableImageDataModule
from transfuse.errors import ConfigError, DataError


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


class ViewData(InMemoryImageDataModule):
    """A dataset of several views per sample; ``keep_views`` picks some of them (one kept view gives plain
    ``[N, C, H, W]`` images, the single-view baseline of the same data).

    Args:
        num_views: views the model sees; when given it must match (configs read it to size models).
        keep_views: indices of the views to keep, in order (all when None).
    """

    def __init__(self, num_views: int | None = None, keep_views: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_views, self.keep_views = num_views, None if keep_views is None else list(keep_views)

    def load_views(self) -> tuple[dict[str, ImageTensors], list[str]]:
        """Splits of ``[N, V, C, H, W]`` images and the class names."""
        raise NotImplementedError

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        given, class_names = self.load_views()
        total = next(iter(given.values())).images.shape[1]
        keep = self.keep_views if self.keep_views is not None else list(range(total))
        if not keep or any(not 0 <= k < total for k in keep):
            raise ConfigError(f"keep_views={keep} must name views among 0..{total - 1}")
        if self.num_views is not None and self.num_views != len(keep):
            raise ConfigError(f"num_views={self.num_views} but {len(keep)} views are kept: {keep}")
        index = keep[0] if len(keep) == 1 else keep
        return {k: ImageTensors(v.images[:, index], v.labels) for k, v in given.items()}, class_names


class MultiView(ViewData):
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
        super().__init__(num_views=num_views, **kwargs)
        self.views = list(views)
        self.source = source(**kwargs)

    def load_views(self) -> tuple[dict[str, ImageTensors], list[str]]:
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


class NoisyMNIST(ViewData):
    """Two views of a digit class (Wang et al. 2015): view 1 the digit rotated by a random angle in
    [-max_degrees, max_degrees]; view 2 another image of the same class with uniform noise added to every
    pixel (up to ``noise`` of the full range) and truncated. Built from mnist5k, deterministic by ``seed``.
    """

    def __init__(self, seed: int = 0, max_degrees: float = 45.0, noise: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed, self.max_degrees, self.noise = seed, max_degrees, noise

    def load_views(self) -> tuple[dict[str, ImageTensors], list[str]]:
        pixels, labels = mnist5k_arrays()
        images, labels = torch.from_numpy(pixels.copy()), torch.from_numpy(labels).long()
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


class PairedFolder(StreamableImageDataModule):
    """N folders holding the same samples (RGB and infrared, RGB and depth): ``<root_i>/<class>/<stem>.*``,
    optionally under train/val/test folders as in ``image_folder``. Every root must have the same classes and
    the same file stems; a stem missing from a root is reported by name. Read into memory or streamed.

    Args:
        roots: one folder per view.
        mode: PIL mode every view is decoded to (``RGB`` or ``L``).
        on_empty_class: ``error`` refuses a class folder without images in any root, naming it; ``skip`` leaves
            it out and logs the folders in one warning line.
        num_views: views the model sees; when given it must match (configs read it to size models).
        keep_views: indices of the roots to read, in order (all when None); one kept view gives plain
            ``[N, C, H, W]`` images, the single-view baseline of the same data.
        **kwargs: :class:`~transfuse.data.streamable.StreamableImageDataModule`'s arguments.
    """

    def __init__(
        self,
        roots: Sequence[str],
        mode: str = "RGB",
        on_empty_class: str = "error",
        num_views: int | None = None,
        keep_views: Sequence[int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(roots) < 1:
            raise ConfigError("paired_folder needs at least one root")
        check_on_empty_class(on_empty_class)
        self.roots = [Path(r).expanduser() for r in roots]
        self.mode, self.on_empty_class = mode, on_empty_class
        self.num_views, self.keep_views = num_views, None if keep_views is None else list(keep_views)

    def describe(self) -> str:
        return f"paired folders {', '.join(map(str, self.roots))}"

    def catalog(self) -> Catalog:
        keep = self.keep_views if self.keep_views is not None else list(range(len(self.roots)))
        if not keep or any(not 0 <= k < len(self.roots) for k in keep):
            raise ConfigError(f"keep_views={keep} must name views among 0..{len(self.roots) - 1}")
        if self.num_views is not None and self.num_views != len(keep):
            raise ConfigError(f"num_views={self.num_views} but {len(keep)} views are kept: {keep}")
        found = [{split: scan_classes(p) for split, p in split_roots(root).items()} for root in self.roots]
        refuse_empty([f for scan in found for _, empty in scan.values() for f in empty], self.on_empty_class)
        scans = [{split: classes for split, (classes, _) in scan.items()} for scan in found]
        first = scans[0]
        for root, scan in zip(self.roots[1:], scans[1:], strict=True):
            if set(scan) != set(first):
                raise DataError(f"{root} has splits {sorted(scan)} but {self.roots[0]} has {sorted(first)}")
            for split in first:
                if sorted(scan[split]) != sorted(first[split]):
                    raise DataError(
                        f"classes differ in {split}: {root} has {sorted(scan[split])}, "
                        f"{self.roots[0]} has {sorted(first[split])}"
                    )
        class_names = sorted(first["train"])
        if not class_names:
            raise DataError(f"no images found under {self.roots[0]} (expected <class>/<image> folders)")
        files, labels, given, missing = [], [], {}, []
        for split, classes in first.items():
            start = len(files)
            for name in sorted(classes):
                stems = [{p.stem: p for p in scan[split][name]} for scan in scans]
                every = sorted(set().union(*stems))
                for root, found_stems in zip(self.roots, stems, strict=True):
                    missing += [f"{root}/{name}/{stem}" for stem in every if stem not in found_stems]
                paired = [stem for stem in every if all(stem in s for s in stems)]
                files += [tuple(stems[k][stem] for k in keep) for stem in paired]
                labels += [class_names.index(name)] * len(paired)
            given[split] = torch.arange(start, len(files))
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise DataError(f"{len(missing)} file(s) have no counterpart in another root: missing {shown}")
        return Catalog(FileSource(files, self.mode), given, torch.tensor(labels), class_names)
