"""The in-memory image datamodule every dataset preset builds on.

A preset only says how to load its images (``load``); splitting, few-label subsampling, batching and the
device-side transforms live here once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from transfuse.data.splits import per_class_subset, stratified_split
from transfuse.data.transforms import BatchTransform, RandomAffine
from transfuse.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class ImageTensors:
    """Images as uint8 ``[N, C, H, W]`` (or ``[N, V, C, H, W]``: V views of each sample) and labels ``[N]``;
    a fused dataset also says which of its sources each image came from (``domains [N]``, else None)."""

    images: Tensor
    labels: Tensor
    domains: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim not in (4, 5) or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise DataError(
                f"expected images [N,C,H,W] or [N,V,C,H,W] and labels [N], got {tuple(self.images.shape)} and "
                f"{tuple(self.labels.shape)}"
            )
        self.labels = self.labels.long()
        if self.domains is not None and self.domains.shape != self.labels.shape:
            raise DataError(f"expected one domain per label, got {tuple(self.domains.shape)} for {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> ImageTensors:
        domains = self.domains[index] if self.domains is not None else None
        return ImageTensors(self.images[index], self.labels[index], domains)


class TensorBatches(Dataset):
    """Serves whole batches by fancy indexing (``__getitems__``) instead of stacking single samples."""

    def __init__(self, data: ImageTensors) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.data.images[i], self.data.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        return self.data.images[index], self.data.labels[index]


def _keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


def _test_shard(dataset: Dataset) -> Sampler | None:
    """In a DDP job, this process's share of the test split, each image exactly once over all processes.

    Lightning's own distributed sampler pads the split with repeated images so that every process gets as many;
    test metrics must count the split as one process would (the test loop runs unwrapped, without collectives per
    batch, so uneven shares are safe). None outside DDP.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)


def data_tags(datamodule: L.LightningDataModule) -> dict[str, str]:
    """The MLflow tags a datamodule adds to its run (:meth:`InMemoryImageDataModule.run_tags`); none for others."""
    return datamodule.run_tags() if isinstance(datamodule, InMemoryImageDataModule) else {}


class InMemoryImageDataModule(L.LightningDataModule):
    """Holds train/val/test as uint8 tensors and transforms batches on the device.

    Args:
        image_size: side of the square images the backbone receives.
        channels: channels the backbone expects (grey images are repeated to RGB).
        mean: normalisation mean per channel (usually the backbone's).
        std: normalisation standard deviation per channel.
        augment: a batch augmentation for training, or None.
        batch_size: training batch size.
        eval_batch_size: batch size for validation and test.
        val_fraction: share of the training pool held out for validation when the dataset has no val split.
        test_fraction: share held out for test when the dataset has no test split.
        train_per_class: keep only this many labelled training images per class (few-label targets).
        val_per_class: likewise for validation, so model selection sees as few labels as training.
        split_seed: fixes which images are val and test; keep it constant to compare runs on the same test set.
        subset_seed: fixes which training images survive ``train_per_class`` (usually the run's seed).
        num_workers: DataLoader workers; 0 is fastest for in-memory tensors.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: RandomAffine | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        train_per_class: int | None = None,
        val_per_class: int | None = None,
        split_seed: int = 0,
        subset_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.transform = BatchTransform(image_size, channels, mean, std, augment)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.train_per_class, self.val_per_class = train_per_class, val_per_class
        self.split_seed, self.subset_seed = split_seed, subset_seed
        self._splits: dict[str, ImageTensors] | None = None
        self._class_names: list[str] = []

    # --- what a preset provides -------------------------------------------------------------------------
    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        """Return the splits the dataset defines (any of ``train``, ``val``, ``test``) and the class names."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the images come from, for error messages (a preset that reads files names its folders)."""
        return f"dataset {type(self).__name__}"

    @property
    def domain_names(self) -> list[str]:
        """The sources of a fused dataset, in the order of its ``domains`` indices; a single dataset has none.
        With names, validation and test batches carry a third item, the source index of each image, and the
        model logs ``val/<source>/*`` and ``test/<source>/*`` beside the pooled metrics."""
        return []

    def run_tags(self) -> dict[str, str]:
        """MLflow tags that describe the data beyond its preset name (a fused dataset's sources)."""
        return {}

    def load_splits(self) -> tuple[dict[str, ImageTensors], list[str]]:
        """The given splits that :attr:`splits` carves: :meth:`load`'s, unless the dataset streams."""
        return self.load()

    # --- shared behaviour -----------------------------------------------------------------------------------
    @property
    def splits(self) -> dict[str, ImageTensors]:
        """The three splits, loaded and carved on first use (idempotent, so Lightning may call setup often)."""
        if self._splits is None:
            given, class_names = self.load_splits()
            if len(class_names) < 2:  # torchmetrics would refuse it later, in a message that names no dataset
                found = f"1 class ({class_names[0]})" if class_names else "no class"
                raise DataError(f"{self.describe()} has {found}; a classifier needs at least two classes")
            self._class_names = class_names
            self._splits = self._carve(given)
            log.info("%s: %s", type(self).__name__, ", ".join(f"{k}={len(v)}" for k, v in self._splits.items()))
        return self._splits

    @property
    def class_names(self) -> list[str]:
        _ = self.splits
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _carve(self, given: dict[str, ImageTensors]) -> dict[str, ImageTensors]:
        unknown = set(given) - set(SPLITS)
        if unknown or "train" not in given:
            raise DataError(f"a dataset must give a 'train' split and only {SPLITS}; got {sorted(given)}")
        splits = dict(given)
        if "test" not in splits:
            rest, held = stratified_split(splits["train"].labels, self.test_fraction, self.split_seed)
            splits["train"], splits["test"] = splits["train"].subset(rest), splits["train"].subset(held)
        if "val" not in splits:
            rest, held = stratified_split(splits["train"].labels, self.val_fraction, self.split_seed + 1)
            splits["train"], splits["val"] = splits["train"].subset(rest), splits["train"].subset(held)
        for name, per_class in (("train", self.train_per_class), ("val", self.val_per_class)):
            if per_class is not None:
                setting = f"{name}_per_class"
                keep = per_class_subset(splits[name].labels, per_class, self.subset_seed, self._class_names, setting)
                splits[name] = splits[name].subset(keep)
        n = len(self._class_names)
        for name, part in splits.items():
            if len(part) and (part.labels.min() < 0 or part.labels.max() >= n):
                raise DataError(f"{name} labels fall outside 0..{n - 1} for {n} class names")
        return {k: splits[k] for k in SPLITS}

    def setup(self, stage: str | None = None) -> None:
        _ = self.splits

    def loader(self, split: str, train: bool = False, labels: bool = True) -> DataLoader:
        """Batches of ``split`` as :meth:`prepare` takes them, shuffled in training batches with ``train``;
        ``labels=False`` hides the labels (zeros stand in), for the unlabelled target of domain adaptation."""
        data = self.splits[split]
        dataset = TensorBatches(data if labels else ImageTensors(data.images, torch.zeros_like(data.labels)))
        return self._batches(dataset, split, train, self.num_workers, collate_fn=_keep_batch)

    def _batches(self, dataset: Dataset, split: str, train: bool, workers: int, **options: object) -> DataLoader:
        """The DataLoader of every split, in memory or streamed: shuffled training batches, evaluation batches
        of ``eval_batch_size``, the test split sharded without repeats under DDP."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=_test_shard(dataset) if split == "test" else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def prepare(self, batch: tuple[Tensor, ...], train: bool, raw: bool = False) -> tuple[Tensor, ...]:
        """A batch of :meth:`loader`, on the device -> what the model takes: transformed and normalised images
        (augmented when ``train``), or with ``raw`` the uint8 images as they are (a feature cache transforms
        only the images it has not seen). Items after the labels (a fused dataset's domains) pass through."""
        images, labels, *rest = batch
        return ((images if raw else self.transform(images, train=train)), labels, *rest)

    def on_after_batch_transfer(self, batch: tuple[Tensor, ...], dataloader_idx: int) -> tuple[Tensor, ...]:
        module = self.trainer.lightning_module if self.trainer is not None else None
        # a model that caches features of a frozen backbone needs the same input every epoch
        augment = self.trainer is not None and self.trainer.training and getattr(module, "wants_augmentation", True)
        return self.prepare(batch, train=augment, raw=getattr(module, "raw_inputs", False))
