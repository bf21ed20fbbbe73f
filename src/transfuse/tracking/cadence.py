"""How often training steps are logged: at least once an epoch, however few batches an epoch has."""

from __future__ import annotations

from collections.abc import Mapping, Sized

from lightning.pytorch import Callback, LightningModule, Trainer


def training_batches(loaders: object, limit: int | float) -> int | None:
    """Batches in one training epoch: the longest of several loaders (Lightning cycles the shorter ones), cut by
    ``limit_train_batches`` (a count, or a fraction); None when a loader has no length.

    >>> training_batches([range(4), range(9)], 1.0), training_batches(range(9), 3), training_batches(range(9), 0.5)
    (9, 3, 4)
    """
    parts = list(loaders.values()) if isinstance(loaders, Mapping) else loaders
    parts = parts if isinstance(parts, list | tuple) else [parts]
    if not parts or not all(isinstance(part, Sized) for part in parts):
        return None
    batches = max(len(part) for part in parts)
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


class StepLogInterval(Callback):
    """Lower ``trainer.log_every_n_steps`` to the batches of one training epoch when an epoch has fewer.

    A few-label run (4 batches an epoch) with the default of 10 would log step points late or never, and
    Lightning warns about it on every such run.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None:
            return
        batches = training_batches(trainer.datamodule.train_dataloader(), trainer.limit_train_batches)
        if batches:
            batches = -(-batches // max(trainer.world_size, 1))  # each DDP process takes its share of the batches
            trainer.log_every_n_steps = min(trainer.log_every_n_steps, batches)
