"""Training a student model inside a fusion's MLflow run (``fusion_method=distill``).

The student is described by the fusion config's ``backbone``, ``head``, ``optimizer``, ``trainer`` and
``callbacks``, starts from any ``init.weights`` source, and logs its curves into the fusion's own run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from transfuse.models.build import build_model
from transfuse.tracking.cadence import StepLogInterval
from transfuse.tracking.run import TrackedRun
from transfuse.weights import InitSpec, initialise, read_file


class Students:
    """Builds students from the config and fits them on the fusion's data into the fusion's run.

    Args:
        cfg: the composed ``transfuse-fuse`` config.
        datamodule: the fusion's data (the student trains on its training split).
        run: the fusion's open run (the student's metrics and source are logged there).
    """

    def __init__(self, cfg: DictConfig, datamodule: L.LightningDataModule, run: TrackedRun) -> None:
        self.cfg, self.datamodule, self.run = cfg, datamodule, run
        #: every student fitted, so the run knows it has learning curves to draw
        self.trained: list[L.LightningModule] = []

    def build(self, init: str | None = None, **extra: Any) -> L.LightningModule:
        """A student from the config (``extra`` goes to the model, e.g. the teacher), loaded from ``init``."""
        class_names = self.datamodule.class_names
        student = build_model(self.cfg, class_names, **extra)
        for item in initialise(student, InitSpec(weights=init), self.run.client, class_names, "reinit"):
            self.run.log_source(**item.record())
        return student

    def fit(self, model: L.LightningModule) -> L.LightningModule:
        """Train ``model`` and return it with its best validation weights."""
        callbacks = [instantiate(c) for c in self.cfg.callbacks.values()] + [StepLogInterval()]
        trainer = instantiate(self.cfg.trainer, logger=self.run.logger(**self.cfg.logger.metrics), callbacks=callbacks)
        trainer.fit(model, datamodule=self.datamodule)
        self.trained.append(model)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
        if best:
            model.load_state_dict(read_file(best)[0])
            Path(best).unlink()  # the fusion's run saves the student it returns: a local copy would double it
        return model
