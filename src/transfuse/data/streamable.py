"""Datasets that are read into memory when they fit and streamed when they do not.

A preset lists its samples once (:meth:`StreamableImageDataModule.catalog`: a source, the sample indices of each
split it defines, the labels and class names). Both paths carve train/val/test and per-class subsets from that
list with the same seeds, so a model sees the same images either way:

* in memory (``data.in_memory=true``): every sample decoded once at ``load_size`` into uint8 tensors, transformed
  per batch on the device (the fast path for small sets); with ``data.cache_dir`` decoded once per sweep into a
  memory-mapped file that later jobs map (:mod:`transfuse.data.cache`);
* streaming (``false``): samples decoded in ``workers`` DataLoader processes with timm's transforms for the
  backbone (:mod:`transfuse.data.streaming`), from the files, or from the decoded cache when ``cache_dir`` is set;
* ``auto``: streams when the decoded pixels would exceed ``max_memory_gb``, and says so in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.data.cache import cached_pixels
from transfuse.data.sources import ArraySource, Source, decode_into, pixel_shape
from transfuse.data.streaming import StreamedSplit, StreamingImages, reason, timm_transforms
from transfuse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IN_MEMORY = ("auto", True, False)
ON_CORRUPT = ("error", "skip")


@dataclass
class Catalog:
    """Every sample of a dataset, before any decoding.

    Attributes:
        source: the samples.
        given: sample indices of each split the dataset defines (``train``, and ``val``/``test`` if it has them).
        labels: the label of every sample of ``source``.
        class_names: names of the labels.
    """

    source: Source
    given: dict[str, Tensor]
    labels: Tensor
    class_names: list[str]


class StreamableImageDataModule(InMemoryImageDataModule):
    """A dataset read into memory or streamed (see the module docstring); a preset provides :meth:`catalog`.

    Args:
        in_memory: ``true``, ``false`` or ``auto`` (stream when the pixels exceed ``max_memory_gb``).
        load_size: side of the squares images are decoded to in memory and in the cache (the short side is resized
            to it, then centre-cropped); streaming from files crops from the full image instead.
        cache_dir: folder of the decoded cache (one decode per sweep), or None to decode in every job.
        on_corrupt: ``error`` stops on an unreadable image with one line naming it; ``skip`` leaves it out and
            logs it (streaming: counted per epoch as ``data/unreadable``).
        max_memory_gb: the most GB of pixels read into memory.
        workers: decoding workers: threads when reading into memory, DataLoader processes when streaming.
        crop_pct: the backbone's evaluation crop ratio (streaming resizes to ``image_size / crop_pct``).
        interpolation: the backbone's resize interpolation (``bicubic``, ``bilinear``).
        auto_augment: a timm auto-augment policy for streamed training images (``rand-m9-mstd0.5-inc1``: RandAugment).
        mixup: arguments of timm's ``Mixup`` for training batches, in memory or streamed (``{mixup_alpha: 0.8,
            cutmix_alpha: 1.0}``), or None; labels become soft targets (the model's label smoothing still applies).
        **kwargs: :class:`~transfuse.data.base.InMemoryImageDataModule`'s arguments.
    """

    def __init__(
        self,
        in_memory: bool | str = "auto",
        load_size: int = 64,
        cache_dir: str | None = None,
        on_corrupt: str = "error",
        max_memory_gb: float = 8.0,
        workers: int = 4,
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        auto_augment: str | None = None,
        mixup: Mapping[str, Any] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if in_memory not in IN_MEMORY:
            raise ConfigError(f"in_memory must be auto, true or false, got {in_memory!r}")
        if on_corrupt not in ON_CORRUPT:
            raise ConfigError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        if not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.in_memory, self.load_size, self.on_corrupt = in_memory, load_size, on_corrupt
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.max_memory_gb, self.workers = max_memory_gb, workers
        self.crop_pct, self.interpolation, self.auto_augment = crop_pct, interpolation, auto_augment
        self.mixup = dict(mixup) if mixup else None
        #: ``(name, reason)`` of the samples left out for being unreadable when read into memory or the cache
        self.skipped: list[tuple[Path, str]] = []
        self._unreadable = 0
        self._source: Source | None = None  # what the streamed splits read: the files, or the decoded cache
        self._train_set: StreamingImages | None = None

    # --- what a preset provides -------------------------------------------------------------------------
    def catalog(self) -> Catalog:
        """List every sample (scan folders, open an index): no pixel is decoded here."""
        raise NotImplementedError

    def memory_gb(self) -> float:
        """GB of pixels the in-memory path would hold."""
        data = self.listed
        return len(data.source) * int(np.prod(pixel_shape(data.source, self.load_size))) / 1e9

    # --- choosing the path ------------------------------------------------------------------------------------
    @cached_property
    def listed(self) -> Catalog:
        """:meth:`catalog`, listed once."""
        return self.catalog()

    @cached_property
    def streams(self) -> bool:
        """Whether this dataset streams (decided once, on first use)."""
        if self.in_memory != "auto":
            return not self.in_memory
        gigabytes = self.memory_gb()
        if gigabytes <= self.max_memory_gb:
            return False
        log.info(
            "%s: %d images at %d px are %.1f GB, above data.max_memory_gb=%s: streaming them in %d DataLoader "
            "workers (data.in_memory=auto; data.in_memory=true refuses, false streams without saying so)",
            self.describe(),
            len(self.listed.source),
            self.load_size,
            gigabytes,
            self.max_memory_gb,
            self.workers,
        )
        return True

    # --- in memory -----------------------------------------------------------------------------------------
    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        data = self.listed
        gigabytes = self.memory_gb()
        if gigabytes > self.max_memory_gb:
            raise DataError(
                f"{len(data.source)} images at {self.load_size}px need {gigabytes:.1f} GB, above "
                f"data.max_memory_gb={self.max_memory_gb}; stream them (data.in_memory=auto or false), lower "
                "data.load_size or raise the limit"
            )
        pixels, unreadable = self._pixels(data.source)
        given = self._readable(data, unreadable)
        return {s: ImageTensors(pixels[i], data.labels[i]) for s, i in given.items() if len(i)}, data.class_names

    def _pixels(self, source: Source) -> tuple[Tensor, list[tuple[int, str]]]:
        """Every sample at ``load_size`` as uint8: mapped from the cache, or decoded here."""
        if self.cache_dir is not None:
            entry = cached_pixels(source, self.load_size, self.cache_dir, self.describe(), self.workers)
            return ArraySource(path=entry.path).images, entry.unreadable
        out = np.zeros((len(source), *pixel_shape(source, self.load_size)), dtype=np.uint8)
        unreadable = decode_into(out, source, range(len(source)), self.load_size, self.workers)
        return torch.from_numpy(out), unreadable

    def _readable(self, data: Catalog, unreadable: list[tuple[int, str]]) -> dict[str, Tensor]:
        """The given splits without the unreadable samples (``on_corrupt=skip``, logged), or a DataError naming
        them (``error``)."""
        if not unreadable:
            return data.given
        listing = "; ".join(f"{data.source.name(i)} ({why})" for i, why in unreadable)
        if self.on_corrupt == "error":
            raise DataError(
                f"{len(unreadable)} unreadable image(s) in {self.describe()}: {listing} "
                "(remove them or set data.on_corrupt=skip)"
            )
        log.warning("skipped %d of %d images that could not be read: %s", len(unreadable), len(data.source), listing)
        self.skipped = [(Path(data.source.name(i)), why) for i, why in unreadable]
        bad = torch.tensor([i for i, _ in unreadable])
        return {split: index[~torch.isin(index, bad)] for split, index in data.given.items()}

    # --- streaming ---------------------------------------------------------------------------------------------
    def load_splits(self) -> tuple[dict, list[str]]:
        if not self.streams:
            return self.load()
        data = self.listed
        source, given = data.source, data.given
        if self.cache_dir is not None:  # stream the decoded squares instead of the files
            entry = cached_pixels(source, self.load_size, self.cache_dir, self.describe(), self.workers)
            given, source = self._readable(data, entry.unreadable), ArraySource(path=entry.path)
        self._source = source
        splits = {s: StreamedSplit(source, i, data.labels[i], self.load_size) for s, i in given.items() if len(i)}
        return splits, data.class_names

    @cached_property
    def transforms(self) -> tuple[object, object]:
        """timm's (train, eval) transforms for the backbone; ``augment`` (on the device in memory) only says whether
        streamed training images are augmented."""
        mean, std = self.transform.mean.flatten().tolist(), self.transform.std.flatten().tolist()
        if len(mean) == 1 and self.transform.channels > 1:
            mean, std = mean * self.transform.channels, std * self.transform.channels
        size, channels = self.transform.image_size, self.transform.channels
        train, evaluate = timm_transforms(
            size, channels, mean, std, self.crop_pct, self.interpolation, self.auto_augment
        )
        return (evaluate if self.transform.augment is None else train), evaluate  # data/augment=none: no augmentation

    def loader(self, split: str, train: bool = False, labels: bool = True) -> DataLoader:
        if not self.streams:
            return super().loader(split, train, labels)
        data = self.splits[split]
        train_transform, eval_transform = self.transforms
        side, channels = self.transform.image_size, self.transform.channels
        views = data.source.views
        dataset = StreamingImages(
            data.source,
            data.index,
            data.labels if labels else torch.zeros_like(data.labels),
            train_transform if train else eval_transform,
            eval_transform if train else None,
            sample_shape=(channels, side, side) if views == 1 else (views, channels, side, side),
            channels=channels,
        )
        if train and labels:
            self._train_set = dataset
            dataset.augment.fill_(self._wants_augmentation())
        return self._batches(dataset, split, train, self.workers, pin_memory=torch.cuda.is_available())

    def _wants_augmentation(self) -> bool:
        module = self.trainer.lightning_module if self.trainer is not None else None
        return bool(getattr(module, "wants_augmentation", True))

    def prepare(self, batch: tuple[Tensor, Tensor], train: bool, raw: bool = False) -> tuple[Tensor, Tensor]:
        """In memory as the base class; streamed batches arrive transformed, and only lose their unreadable
        samples here (``on_corrupt=error``: a DataError naming the file). Then mixup, for training batches."""
        images, labels = super().prepare(batch, train, raw) if not self.streams else self._readable_rows(batch)
        if train and self.mixup and len(images) and len(images) % 2 == 0:  # timm's Mixup pairs a batch with its flip
            images, labels = self._mixup(images, labels)
        return images, labels

    @cached_property
    def _mixup(self):
        from timm.data import Mixup

        return Mixup(**{"label_smoothing": 0.0, **self.mixup}, num_classes=self.num_classes)

    def _readable_rows(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        bad = labels < 0
        if not bad.any():
            return images, labels
        indices = (-1 - labels[bad]).tolist()
        if self.on_corrupt == "error":
            i = indices[0]
            raise DataError(
                f"cannot read {self._source.name(i)} ({reason(self._source, i)}) in {self.describe()}: it became "
                "unreadable after the dataset was listed; remove it or set data.on_corrupt=skip"
            )
        for i in indices:
            log.warning("skipped an unreadable image: %s (%s)", self._source.name(i), reason(self._source, i))
        self._unreadable += len(indices)
        return images[~bad], labels[~bad]

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if self._train_set is not None and self.trainer is not None and self.trainer.training:
            self._train_set.augment.fill_(self._wants_augmentation())  # workers follow within a few batches
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def pop_unreadable(self) -> int | None:
        """Images skipped while streaming since the last call; None when this dataset is in memory."""
        if not self.streams:
            return None
        count, self._unreadable = self._unreadable, 0
        return count
