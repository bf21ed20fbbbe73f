"""Building a model from a composed config: backbone, head, optimiser, scheduler and strategy, joined in
``cfg.model``. Both entry points use it (``transfuse-train`` for every stage, ``transfuse-fuse`` for a student),
so neither imports the other."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig


def build_model(cfg: DictConfig, class_names: list[str], **extra: Any) -> L.LightningModule:
    """Instantiate the parts and join them (``extra`` keyword arguments go to the model, e.g. a teacher)."""
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head, in_features=backbone.num_features, num_classes=len(class_names))
    return instantiate(
        cfg.model,
        _convert_="object",
        backbone=backbone,
        head=head,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        finetune=instantiate(cfg.finetune),
        class_names=class_names,
        **extra,
    )
