"""torchvision's classic datasets, held in memory at their native size; batches transformed on the device or streamed.

Users online may set ``download: true``; offline (and in tests) a missing dataset is an error that says
where the files must go.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from transfuse.data.base import ImageTensors
from transfuse.data.sources import ArraySource
from transfuse.data.streamable import Catalog, StreamableImageDataModule
from transfuse.errors import DataError

#: name -> (class, how the constructor selects the split): ``train`` flag or ``split`` string.
DATASETS = {
    "CIFAR10": (datasets.CIFAR10, "train"),
    "CIFAR100": (datasets.CIFAR100, "train"),
    "MNIST": (datasets.MNIST, "train"),
    "FashionMNIST": (datasets.FashionMNIST, "train"),
    "USPS": (datasets.USPS, "train"),
    "SVHN": (datasets.SVHN, "split"),
    "STL10": (datasets.STL10, "split"),
}


def _to_tensors(dataset) -> tuple[ImageTensors, list[str] | None]:
    images = torch.as_tensor(np.asarray(dataset.data))
    if images.ndim == 3:  # N, H, W grey
        images = images.unsqueeze(1)
    elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # N, H, W, C
        images = images.permute(0, 3, 1, 2)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels
    return ImageTensors(images.to(torch.uint8).contiguous(), torch.as_tensor(np.asarray(labels))), getattr(
        dataset, "classes", None
    )


class TorchvisionDataset(StreamableImageDataModule):
    """One of :data:`DATASETS` by name; the official test split is kept, validation is carved from train.

    In memory, images stay at their native size (the device resizes each batch); streamed
    (``data.in_memory=false``), workers apply timm's transforms to each image, e.g. random resized crops at 224 px.

    Args:
        name: a key of :data:`DATASETS`.
        root: folder holding the files (torchvision's layout for that dataset).
        download: fetch the files when they are missing (needs internet).
        **kwargs: :class:`~transfuse.data.streamable.StreamableImageDataModule`'s arguments.
    """

    def __init__(self, name: str, root: str, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if name not in DATASETS:
            raise DataError(f"unknown torchvision dataset {name!r}; choose one of {sorted(DATASETS)}")
        self.name, self.root, self.download = name, Path(root).expanduser(), download

    def describe(self) -> str:
        return f"{self.name} under {self.root}"

    def _open(self, train: bool):
        cls, selector = DATASETS[self.name]
        split = {"train": train} if selector == "train" else {"split": "train" if train else "test"}
        try:
            return cls(root=str(self.root), download=self.download, **split)
        except (RuntimeError, FileNotFoundError, OSError) as err:
            raise DataError(
                f"{self.name} is not under {self.root}: put its files there in torchvision's layout, "
                f"or set data.download=true when online ({err})"
            ) from None

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        return self._loaded

    @cached_property
    def _loaded(self) -> tuple[dict[str, ImageTensors], list[str]]:
        train, classes = _to_tensors(self._open(train=True))
        test, _ = _to_tensors(self._open(train=False))
        num = int(max(train.labels.max(), test.labels.max())) + 1
        return {"train": train, "test": test}, list(classes) if classes else [str(i) for i in range(num)]

    def catalog(self) -> Catalog:
        given, class_names = self.load()
        train, test = given["train"], given["test"]
        index = torch.arange(len(train) + len(test))
        source = ArraySource(torch.cat([train.images, test.images]))
        labels = torch.cat([train.labels, test.labels])
        return Catalog(source, {"train": index[: len(train)], "test": index[len(train) :]}, labels, class_names)

    def memory_gb(self) -> float:
        """The native arrays torchvision holds in memory anyway: streaming never saves memory here."""
        return self.listed.source.images.numel() / 1e9
