"""``transfuse-train``: compose the config, build the parts, fit/test with Lightning, track in MLflow.

Every stage (``pretrain``, ``finetune``, ``evaluate``) runs through the same straight flow; a stage config
only switches its steps on or off. Torch, Lightning and MLflow are imported inside :func:`train`, so that
``--help``, ``--cfg job`` and config errors answer at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from transfuse.cli_help import print_help_if_asked
from transfuse.config import CONF_DIR, is_none, register_resolvers
from transfuse.console import quiet_libraries, result_table
from transfuse.errors import ConfigError, Preempted
from transfuse.launch import launch
from transfuse.ranks import is_rank_zero, shared_checkpoint
from transfuse.sweeps import config_hash, recipe_hash, run_job
from transfuse.tracking.tags import HASH_TAG, RECIPE_TAG

if TYPE_CHECKING:
    import lightning as L

    from transfuse.models.classifier import ImageClassifier

log = logging.getLogger("transfuse")
register_resolvers()


#: the splits a test of the last epoch's weights is logged under (``test/acc`` -> ``test_last/acc``)
LAST_EPOCH_SPLITS = {"test": "test_last", "test_source": "test_last_source"}


def test_last_epoch(trainer: L.Trainer, model: ImageClassifier, datamodule: L.LightningDataModule) -> dict:
    """Test the weights of the last epoch (still in ``model`` after fit) and log them as ``test_last/*``
    (``test_source/*`` as ``test_last_source/*``), so a report can choose the best or the last checkpoint."""
    with model.splits_renamed(LAST_EPOCH_SPLITS):
        loaders = trainer.test(model, datamodule=datamodule, verbose=False)
    prefixes = tuple(f"{name}/" for name in LAST_EPOCH_SPLITS.values())
    return {key: float(value) for loader in loaders for key, value in loader.items() if key.startswith(prefixes)}


def model_inputs(model: ImageClassifier, datamodule: L.LightningDataModule) -> object:
    """The first test batch as the network (backbone then head) takes it: for the cost, and for pruning that
    traces the network."""
    loaders = datamodule.test_dataloader()
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    images = datamodule.on_after_batch_transfer(tuple(next(iter(loader)))[:2], 0)[0]
    if not images.is_floating_point():  # a feature-caching model takes raw images and transforms them itself
        images = model.input_transform(images, train=False)
    return images


def measure_cost(model: ImageClassifier, inputs: object, device: object, cost: DictConfig) -> dict[str, float]:
    """The ``cost/*`` metrics of the trained network (backbone and head, never the feature cache) on ``device``,
    timed on ``inputs`` (repeated up to the largest latency batch)."""
    from transfuse.models.summary import model_cost

    model.to(device).eval()
    predict = lambda x: model.head(model.backbone(x))  # noqa: E731
    return model_cost([model.backbone, model.head], predict, inputs.to(device), cost.latency_batches, cost.repeats)


def test_phase(
    cfg: DictConfig, trainer: L.Trainer, model: ImageClassifier, datamodule: object, run: object, pruned: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """After the fit: test the best (and with ``test_last``, the last) weights, log plots and the served model, save
    a pruned model that was not fitted, and measure the tested network's cost. Returns ``(time/* and cost/*
    metrics, test_last/* metrics)``."""
    from transfuse.models import export
    from transfuse.tracking import artifacts

    seconds: dict[str, float] = {}
    last: dict[str, float] = {}
    if cfg.stage.test:
        best = trainer.checkpoint_callback is not None and bool(trainer.checkpoint_callback.best_model_path)
        if cfg.stage.fit and best and cfg.test_last:
            last = test_last_epoch(trainer, model, datamodule)
        start = time.perf_counter()
        ckpt_path = "best" if cfg.stage.fit and best else None
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)  # our table at the end
        seconds["time/test_s"] = time.perf_counter() - start
        if cfg.logger.plots:
            artifacts.log_plots(run, model.test_summary, model.class_names, trainer.logger)
        if cfg.logger.get("log_model"):  # the tested (best) weights, served: pixels in, logits out
            example = export.example_images(datamodule, cfg.data.mean, cfg.data.std)
            artifacts.log_model(run, export.served(model, cfg.data.mean, cfg.data.std, model.class_names), example)
    if pruned and not cfg.stage.fit:  # no fit, no Lightning checkpoint: save the pruned one
        best_path = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
        trainer.save_checkpoint(best_path, weights_only=True)  # after test: the model is attached
        run.client.log_artifact(run.run_id, str(best_path), "checkpoints")
    if cfg.stage.test and is_rank_zero() and cfg.cost.latency_batches is not None:
        seconds |= measure_cost(model, model_inputs(model, datamodule), trainer.strategy.root_device, cfg.cost)
    return seconds, last


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one stage and return its final metrics (``val/*``, ``test/*``, ``val/acc_best``...).

    Data, model and initial weights are built before the MLflow run opens: an input error leaves no run.
    """
    if cfg.stage.requires_weights and is_none(cfg.init.weights):
        raise ConfigError(f"stage={cfg.tags.stage} needs init.weights=<source> (a run, a query, a file or timm)")
    if bool(cfg.stage.get("compress")) != (cfg.get("compress") is not None):
        raise ConfigError("stage=compress and compress=<method> (e.g. magnitude) go together: give both or neither")
    from transfuse.tracking.store import check_reachable

    check_reachable(cfg.logger.tracking_uri)  # a server that does not answer: one line before the slow imports
    import lightning as L
    from hydra.utils import instantiate

    from transfuse.data.base import data_tags
    from transfuse.ddp import cluster_plugins
    from transfuse.models.build import build_model
    from transfuse.tracking import artifacts
    from transfuse.tracking.cadence import StepLogInterval
    from transfuse.tracking.datasets import run_inputs
    from transfuse.tracking.liveness import resume_target
    from transfuse.tracking.resume import Preemption, ResumeCheckpoints, restore_files
    from transfuse.tracking.run import tracked_run
    from transfuse.tracking.store import open_store
    from transfuse.transferability import score_model
    from transfuse.weights import InitSpec, initialise

    if not is_rank_zero():  # another process of a DDP job: computes with rank 0, which speaks for the job
        logging.getLogger("transfuse").setLevel(logging.WARNING)
    if cfg.get("deterministic"):  # cuBLAS needs a fixed workspace to be deterministic, set before CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    init = InitSpec.from_config(cfg.init)
    compressor = instantiate(cfg.compress) if cfg.get("compress") is not None else None  # a bad ratio fails here
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.datamodule)
    model = build_model(cfg, datamodule.class_names)
    if cfg.trainer.get("fast_dev_run"):
        log.warning(
            "debug=fdr: one batch per loop and no checkpoint, so %s is not measured (debug=limit: two short epochs)",
            cfg.stage.return_metric,
        )
    epochs = cfg.trainer.get("max_epochs")
    if cfg.stage.fit and not cfg.trainer.get("fast_dev_run") and epochs is not None and epochs >= 0:
        model.finetune.check_schedule(epochs)  # a strategy that would silently do nothing is refused
    client = open_store(cfg.logger.tracking_uri)
    loaded = initialise(model, init, client, datamodule.class_names, cfg.stage.on_head_mismatch)
    if compressor is not None:  # pruned before the run opens: a model it cannot prune leaves no run
        compressor.apply(model, model_inputs(model, datamodule))
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] if cfg.stage.fit else []
    if compressor is not None and cfg.stage.fit:
        callbacks.append(compressor)  # keeps what was pruned pruned while fine-tuning
    digest = config_hash(cfg)
    resumable = cfg.stage.fit and is_rank_zero()  # rank 0 decides; the processes it starts follow (shared_checkpoint)
    resumed = resume_target(client, cfg.resume, cfg.logger.experiment_name, digest) if resumable else None
    tags = {**cfg.tags, **data_tags(datamodule), HASH_TAG: digest, RECIPE_TAG: recipe_hash(cfg)}
    resume_id = resumed.info.run_id if resumed is not None else None
    with tracked_run(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.run_name, tags, resume_id) as run:
        if resumed is None:  # a resumed run keeps the config and sources it logged first
            run.log_config(cfg)
            for item in loaded:
                run.log_source(**item.record())
            sources = [item.run_id for item in loaded if item.run_id]
            run.log_datasets(run_inputs(client, datamodule, cfg.tags, cfg.stage.fit, sources))
        if cfg.stage.score:
            source_head = any(item.target == "init" and not item.report.head_reinitialised for item in loaded)
            run.log_metrics(score_model(model, datamodule, source_head=source_head))
        checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
        if cfg.stage.fit:
            every = {key: cfg.checkpoint[key] for key in ("every_n_epochs", "every_minutes")}
            saver = ResumeCheckpoints(checkpoints / "resume.ckpt", run, **every)
            preemption = Preemption()
            callbacks += [saver, preemption, StepLogInterval()]
        logger = run.logger(**cfg.logger.metrics)
        if resumed is not None:
            logger.skip_stored()
        trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, plugins=cluster_plugins())
        seconds: dict[str, float] = {}
        if cfg.stage.fit:
            start = time.perf_counter()
            state = shared_checkpoint(restore_files(run, checkpoints) if resumed is not None else None)
            try:
                trainer.fit(model, datamodule=datamodule, ckpt_path=state, weights_only=True)
            except BaseException as err:
                saver.upload()  # a preempted or failed fit keeps its last full checkpoint in the run
                if isinstance(err, Preempted):
                    err.progressed = saver.saves > 0
                raise
            finally:
                preemption.restore()
            seconds["time/fit_s"] = time.perf_counter() - start
            saver.discard()
            artifacts.log_checkpoints(run, trainer, checkpoints / "last.ckpt", cfg.last_checkpoint)
        tested, last = test_phase(cfg, trainer, model, datamodule, run, compressor is not None)
        seconds |= tested
        run.log_metrics(seconds)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} | run.logged_scores | last
        if cfg.stage.fit and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score:
            metrics[f"{trainer.checkpoint_callback.monitor}_best"] = float(trainer.checkpoint_callback.best_model_score)
    if not cfg.checkpoint.keep_local and is_rank_zero():  # the FINISHED run holds them
        shutil.rmtree(checkpoints, ignore_errors=True)
    log.info(result_table(f"results of run {run.name}:", metrics))
    return metrics


SUMMARY = "One run of one stage (pretrain, finetune, evaluate, score, adapt): fit and test a model, tracked in MLflow."


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.stage.return_metric`` for sweepers (NaN when the run has none)."""
    quiet_libraries()
    if cfg.get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    return run_job(cfg, train, cfg.stage.return_metric, "transfuse-train")


def main() -> None:
    """The ``transfuse-train`` command: a fast ``--help`` of the groups it takes, else Hydra."""
    if not print_help_if_asked("transfuse-train", "train", SUMMARY):
        launch("transfuse-train", "train", _hydra_main)


if __name__ == "__main__":
    main()
