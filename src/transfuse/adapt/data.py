"""A labelled source and an unlabelled target served side by side for domain adaptation."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from transfuse.data.base import ImageTensors, InMemoryImageDataModule
from transfuse.data.streaming import CountsUnreadable
from transfuse.errors import DataError

#: order of the validation and test loaders; metrics use these names
DOMAINS = ("source", "target")


class DomainPair(L.LightningDataModule):
    """Training batches ``{"source": (images, labels), "target": images}``; val and test per domain.

    The target's training labels never leave this class. Validation and test loaders are
    ``[source, target]``: source validation selects models by default, target validation only as a
    clearly tagged oracle, and the target test split is what adaptation is judged on.

    Args:
        source: labelled source datamodule.
        target: target datamodule; only its training images are used for training.
    """

    def __init__(self, source: InMemoryImageDataModule, target: InMemoryImageDataModule) -> None:
        super().__init__()
        self.source, self.target = source, target

    @property
    def class_names(self) -> list[str]:
        names, target_names = self.source.class_names, self.target.class_names
        if names != target_names:
            raise DataError(f"source classes {names} differ from target classes {target_names}")
        return names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def domains(self) -> dict[str, InMemoryImageDataModule]:
        """The two datamodules by role (what a run logs as its datasets)."""
        return {"source": self.source, "target": self.target}

    @property
    def splits(self) -> dict[str, ImageTensors]:
        """The source's splits (what a single-domain caller expects)."""
        return self.source.splits

    @property
    def transform(self):
        return self.source.transform

    def setup(self, stage: str | None = None) -> None:
        _ = self.class_names

    def train_dataloader(self) -> dict[str, DataLoader]:
        target = self.target.loader("train", train=True, labels=False)  # zeros stand in for the target's labels
        return {"source": self.source.train_dataloader(), "target": target}

    def val_dataloader(self) -> list[DataLoader]:
        return [self.source.val_dataloader(), self.target.val_dataloader()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.source.test_dataloader(), self.target.test_dataloader()]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict):  # training: each domain through its own transform, augmentation on
            return {
                "source": self.source.prepare(batch["source"], train=True),
                "target": self.target.prepare(batch["target"], train=True)[0],
            }
        return (self.source, self.target)[dataloader_idx].prepare(batch, train=False)

    def pop_unreadable(self) -> int | None:
        """Images the two domains skipped while streaming since the last call; None when neither streams."""
        counts = [part.pop_unreadable() for part in (self.source, self.target) if isinstance(part, CountsUnreadable)]
        counts = [c for c in counts if c is not None]
        return sum(counts) if counts else None
