"""``transfuse-train``: compose the config, build the parts, fit/test with Lightning, track in MLflow.

Every stage (``pretrain``, ``finetune``, ``evaluate``) runs through the same straight flow; a stage config
only switches its steps on or off.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from transfuse import weights
from transfuse.config import CONF_DIR, register_resolvers
from transfuse.errors import ConfigError
from transfuse.sweeps import HASH_TAG, config_hash, run_job
from transfuse.tracking import tracked_run
from transfuse.transferability import score_model

log = logging.getLogger("transfuse")
register_resolvers()


def build_model(cfg: DictConfig, class_names: list[str], **extra: object) -> L.LightningModule:
    """Instantiate backbone, head, optimiser, scheduler and strategy, and join them in ``cfg.model``
    (``extra`` keyword arguments go to the model, e.g. a distillation teacher)."""
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


def test_last_epoch(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
    """Test the weights of the last epoch (still in ``model`` after fit) and log them as ``test_last/*``
    (``test_source/*`` as ``test_last_source/*``), so a report can choose the best or the last checkpoint."""
    renames = {"test": "test_last", "test_source": "test_last_source"}
    trainer.logger.renames = renames
    try:
        loaders = trainer.test(model, datamodule=datamodule, verbose=False)
        results = {key: value for loader in loaders for key, value in loader.items()}
    finally:
        trainer.logger.renames = {}
    return {
        f"{renames[split]}/{rest}": float(value)
        for key, value in results.items()
        for split, _, rest in [key.partition("/")]
        if split in renames and rest
    }


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one stage and return its final metrics (``val/*``, ``test/*``, ``val/acc_best``...)."""
    if cfg.stage.requires_weights and str(cfg.init.weights).lower() in ("none", "null", ""):
        raise ConfigError(f"stage={cfg.tags.stage} needs init.weights=<source> (a run, a query, a file or timm)")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.datamodule)
    model = build_model(cfg, datamodule.class_names)
    tags = {**cfg.tags, HASH_TAG: config_hash(cfg)}
    with tracked_run(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.run_name, tags) as run:
        run.log_config(cfg)
        source = weights.resolve(cfg.init.weights, run.client, model.backbone)
        report = None
        copy_blocks = cfg.init.copy_blocks
        fresh = {k: v.clone() for k, v in model.state_dict().items()} if copy_blocks is not None else {}
        if source is not None:
            report = weights.load_into(
                model,
                source,
                datamodule.class_names,
                cfg.stage.on_head_mismatch,
                cfg.init.class_map,
                fresh_head=cfg.init.fresh_head or copy_blocks is not None,
            )
            if copy_blocks is not None:
                weights.reset_above(model, fresh, copy_blocks)
            run.log_source(source, report)
        if hasattr(model.backbone, "branch_weights"):
            for i, branch_source in weights.load_branches(model, run.client, datamodule.class_names).items():
                run.client.set_tag(run.run_id, f"init.branch.{i}", branch_source.source)
        if cfg.stage.score:
            run.log_metrics(
                score_model(model, datamodule, source_head=report is not None and not report.head_reinitialised)
            )
        callbacks: list[Callback] = [instantiate(c) for c in cfg.callbacks.values()] if cfg.stage.fit else []
        trainer = instantiate(cfg.trainer, logger=run.logger(**cfg.logger.metrics), callbacks=callbacks)
        seconds: dict[str, float] = {}
        last: dict[str, float] = {}
        if cfg.stage.fit:
            start = time.perf_counter()
            trainer.fit(model, datamodule=datamodule)
            seconds["time/fit_s"] = time.perf_counter() - start
            run.log_checkpoints(trainer, Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", cfg.last_checkpoint)
        if cfg.stage.test:
            best = trainer.checkpoint_callback is not None and bool(trainer.checkpoint_callback.best_model_path)
            if cfg.stage.fit and best and cfg.test_last:
                last = test_last_epoch(trainer, model, datamodule)
            start = time.perf_counter()
            trainer.test(model, datamodule=datamodule, ckpt_path="best" if cfg.stage.fit and best else None)
            seconds["time/test_s"] = time.perf_counter() - start
            if cfg.logger.plots:
                run.log_plots(model.test_summary, model.class_names, trainer.logger)
        run.log_metrics(seconds)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} | run.logged_scores | last
        if cfg.stage.fit and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score:
            metrics[f"{trainer.checkpoint_callback.monitor}_best"] = float(trainer.checkpoint_callback.best_model_score)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.stage.return_metric`` for sweepers (NaN when the run has none)."""
    if cfg.get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    return run_job(cfg, train, cfg.stage.return_metric, "transfuse-train")


if __name__ == "__main__":
    main()
