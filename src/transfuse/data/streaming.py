"""Streaming: samples decoded in DataLoader workers with timm's transforms for the backbone.

A streamed split is a list of sample indices into a :class:`~transfuse.data.sources.Source`; its batches arrive
transformed and normalised, so the datamodule only drops unreadable samples on the device side. An unreadable
sample never raises in a worker: it travels as a zero image with the label ``-1 - index``, and the main process
names its file (``data.on_corrupt=error``) or counts it (``skip``), which :class:`UnreadableImages` logs per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch import Callback
from torch import Tensor
from torch.utils.data import Dataset

from transfuse.data.sources import UNREADABLE, ArraySource, Source, decode_into, pixel_shape
from transfuse.errors import DataError

log = logging.getLogger(__name__)


def timm_transforms(
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float,
    interpolation: str,
    auto_augment: str | None = None,
) -> tuple[object, object]:
    """timm's standard (train, eval) transforms: random resized crop and flip (and ``auto_augment``, e.g.
    ``rand-m9-mstd0.5-inc1`` for RandAugment) for training; resize to ``image_size / crop_pct`` and centre crop
    for evaluation, as the backbone's pretrained config evaluates."""
    from timm.data import create_transform

    common = {
        "input_size": (channels, image_size, image_size),
        "mean": tuple(mean),
        "std": tuple(std),
        "interpolation": interpolation,
    }
    # colour jitter is off unless asked for through auto_augment: random resized crop and flip are the standard
    train = create_transform(is_training=True, auto_augment=auto_augment, color_jitter=None, **common)
    return train, create_transform(is_training=False, crop_pct=crop_pct, **common)


class StreamingImages(Dataset):
    """Samples ``source[index]`` with their ``targets``, each decoded and transformed in the worker that loads it.

    Args:
        source: where the images come from.
        index: the sample indices of this split.
        targets: one label per sample (zeros for a loader of images only).
        transform: a PIL image -> normalised ``[C, H, W]`` tensor.
        eval_transform: used instead of ``transform`` while :attr:`augment` is off (a training split whose
            model caches features of a frozen backbone needs the same input every epoch); None: always ``transform``.
        sample_shape: shape of one transformed sample, for the zero image an unreadable sample travels as.
        channels: channels the transform expects (images are converted to RGB or L first).
    """

    def __init__(
        self,
        source: Source,
        index: Tensor,
        targets: Tensor,
        transform,
        eval_transform=None,
        sample_shape: tuple[int, ...] = (),
        channels: int = 3,
    ) -> None:
        self.source, self.index, self.targets = source, index, targets
        self.transform, self.eval_transform, self.sample_shape = transform, eval_transform, sample_shape
        self.mode = "RGB" if channels == 3 else "L"
        #: whether training samples are augmented; shared with the workers, so the model may switch it per batch
        self.augment = torch.ones((), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = int(self.index[i])
        transform = self.transform if self.eval_transform is None or bool(self.augment) else self.eval_transform
        try:
            views = [transform(img if img.mode == self.mode else img.convert(self.mode)) for img in self.source.read(j)]
        except UNREADABLE:
            return torch.zeros(self.sample_shape), -1 - j
        return (views[0] if len(views) == 1 else torch.stack(views)), int(self.targets[i])


class LazyImages:
    """The uint8 images of a streamed split at the load size, decoded only when sliced (``images[a:b]``).

    Stands in for the ``images`` tensor of an in-memory split where a caller walks a split in slices (fusion
    members, transferability scores): memory holds one slice at a time. A mapped cache or array is sliced directly.
    """

    dtype = torch.uint8

    def __init__(self, source: Source, index: Tensor, size: int, workers: int = 8) -> None:
        self.source, self.index, self.size, self.workers = source, index, size, workers

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        if isinstance(self.source, ArraySource):
            return (len(self), *self.source.images.shape[1:])
        return (len(self), *pixel_shape(self.source, self.size))

    def __getitem__(self, key) -> Tensor:
        rows = self.index[key]
        if isinstance(self.source, ArraySource):
            return self.source.images[rows]
        single = rows.ndim == 0
        rows = rows.reshape(-1).tolist()
        out = np.zeros((len(rows), *pixel_shape(self.source, self.size)), dtype=np.uint8)
        failed = decode_into(out, self.source, rows, self.size, self.workers)
        if failed:
            i, why = failed[0]
            raise DataError(f"cannot read {self.source.name(i)} ({why}); remove it and start again")
        images = torch.from_numpy(out)
        return images[0] if single else images


@dataclass
class StreamedSplit:
    """One split of a streamed dataset: sample indices into ``source`` and their labels (carved and subsampled
    exactly as an in-memory split, by ``labels``)."""

    source: Source
    index: Tensor
    labels: Tensor
    load_size: int

    def __post_init__(self) -> None:
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: Tensor) -> StreamedSplit:
        return StreamedSplit(self.source, self.index[keep], self.labels[keep], self.load_size)

    @property
    def images(self) -> LazyImages:
        return LazyImages(self.source, self.index, self.load_size)


def reason(source: Source, i: int) -> str:
    """Why sample ``i`` cannot be read, asked again in this process (the worker that met it only marked it)."""
    try:
        source.read(i)
    except UNREADABLE as err:
        return f"{type(err).__name__}: {err}"
    return "unreadable while streaming, readable again now"


@runtime_checkable
class CountsUnreadable(Protocol):
    """A datamodule that streams and counts the samples it could not read."""

    def pop_unreadable(self) -> int | None:
        """Samples skipped since the last call (None when nothing streams)."""
        ...


class UnreadableImages(Callback):
    """Logs ``data/unreadable`` at the end of every training epoch: the images a streaming datamodule skipped
    (``data.on_corrupt=skip``) in that epoch's training and validation batches. Nothing when nothing streams."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        count = datamodule.pop_unreadable() if isinstance(datamodule, CountsUnreadable) else None
        if count is not None:
            # summed over the processes of a DDP job: each skipped its own share of the files
            pl_module.log(
                "data/unreadable", float(count), on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum"
            )
