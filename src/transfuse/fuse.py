"""``transfuse-fuse``: fuse trained runs (ensembles, soups) on a target dataset and track the result in MLflow.

The flow mirrors ``transfuse-train``: compose the config, instantiate the data and the method, load the
member runs named by ``pool.runs`` or ``pool.filter``, fuse, and log the fused metrics next to every member's
(``member/<i>/test/acc``), with the cost of the fused model and any fusion weights; soups are saved as
``checkpoints/best.ckpt`` so that ``init.weights=runs:/<fusion run>`` starts training from them.
"""

from __future__ import annotations

import logging
import statistics
import time

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from transfuse import weights
from transfuse.config import CONF_DIR, register_resolvers
from transfuse.fusion.members import find_members, load_member
from transfuse.fusion.methods import Fused, Pool
from transfuse.models.classifier import classification_metrics
from transfuse.models.summary import summarise_predictions
from transfuse.sweeps import HASH_TAG, config_hash, run_job
from transfuse.tracking import tracked_run
from transfuse.train import build_model

log = logging.getLogger("transfuse")
register_resolvers()
SPLITS = ("val", "test")


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, prefix: str) -> dict[str, float]:
    """Accuracy, macro-F1 and calibration error, as every training run reports them."""
    metrics = classification_metrics(num_classes)
    metrics.update(logits, labels)
    return {f"{prefix}{k}": float(v) for k, v in metrics.compute().items()}


def latency_ms(fused: Fused, images: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time per image of the fused model's whole prediction path, after one warm-up pass."""
    fused.predict(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fused.predict(images)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / len(images)


def fuse(cfg: DictConfig) -> dict[str, float]:
    """Fuse the members on ``cfg.data`` with ``cfg.method``; return the logged metrics."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    class_names = datamodule.class_names
    method = instantiate(cfg.method)
    tags = {**cfg.tags, HASH_TAG: config_hash(cfg)}
    with tracked_run(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.run_name, tags) as run:
        run.log_config(cfg)
        runs = find_members(run.client, cfg.pool.runs, cfg.pool.filter, cfg.pool.experiments)
        run.log_members(runs)
        members = [load_member(run.client, r, class_names) for r in runs]
        images = {s: datamodule.splits[s].images for s in ("train", *SPLITS)}
        labels = {s: datamodule.splits[s].labels for s in ("train", *SPLITS)}
        logits = {s: torch.stack([m.predict(images[s]) for m in members]) for s in SPLITS}

        def build_student(init: str = "none", **extra: object) -> L.LightningModule:
            student = build_model(cfg, class_names, **extra)
            source = weights.resolve(init, run.client, student.backbone)
            if source is not None:
                run.log_source(source, weights.load_into(student, source, class_names, "reinit"))
            return student

        trained: list[L.LightningModule] = []

        def fit(model: L.LightningModule) -> L.LightningModule:
            callbacks = [instantiate(c) for c in cfg.callbacks.values()]
            trainer = instantiate(cfg.trainer, logger=run.logger(**cfg.logger.metrics), callbacks=callbacks)
            trainer.fit(model, datamodule=datamodule)
            trained.append(model)
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
            if best:
                model.load_state_dict(weights.read_file(best)[0])
            return model

        pool = Pool(members, images, labels, logits, build_student, fit)
        log.info("fusing %d members with %s", len(members), type(method).__name__)
        fused = method.fuse(pool)

        n = len(class_names)
        metrics: dict[str, float] = {}
        for split in SPLITS:
            metrics |= split_metrics(fused.logits[split], labels[split], n, f"{split}/")
            for i, member_logits in enumerate(pool.logits[split]):
                metrics[f"member/{i}/{split}/acc"] = pool.accuracy(member_logits, split)
        member_val, member_test = pool.member_accuracy("val"), pool.member_accuracy("test")
        chosen = max(range(len(members)), key=lambda i: member_val[i])
        metrics["members/best_val/test/acc"] = member_test[chosen]  # the single model validation would pick
        metrics["members/mean/test/acc"] = statistics.fmean(member_test)
        metrics["cost/params"] = float(fused.params)
        metrics["cost/members_used"] = float(len(fused.used))
        metrics["cost/latency_ms_per_image"] = latency_ms(fused, images["test"][: cfg.latency_images])
        metrics |= fused.weights
        run.log_metrics(metrics)
        if cfg.logger.plots:  # confusion matrix and reliability of the fused test predictions, as a run draws them
            summary = summarise_predictions(fused.logits["test"], labels["test"], n, cfg.model.ece_bins)
            run.log_plots(summary, class_names, curves=bool(trained))
        if fused.state_dict is not None:
            run.log_state_dict(fused.state_dict, class_names)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="fuse")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.return_metric`` for sweepers (NaN when missing)."""
    return run_job(cfg, fuse, cfg.return_metric, "transfuse-fuse")


if __name__ == "__main__":
    main()
