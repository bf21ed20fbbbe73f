"""``transfuse-fuse``: fuse trained runs (ensembles, soups, students) on a target dataset, tracked in MLflow.

The flow mirrors ``transfuse-train``: compose the config, instantiate the data and the method, load the
member runs named by ``pool.runs`` or ``pool.filter`` (before any run opens, so a wrong member leaves none),
fuse, and log the fused metrics next to every member's (``member/<i>/test/acc``), with the cost of the fused
model and any fusion weights; soups and students are saved as ``checkpoints/best.ckpt`` so that
``init.weights=runs:/<fusion run>`` starts training from them. Torch, Lightning and MLflow are imported inside
:func:`fuse`, so that ``--help``, ``--cfg job`` and config errors answer at once.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, open_dict

from transfuse.cli_help import print_help_if_asked
from transfuse.config import CONF_DIR, register_resolvers
from transfuse.console import fusion_table, quiet_libraries
from transfuse.errors import ConfigError
from transfuse.launch import launch
from transfuse.sweeps import config_hash, recipe_hash, run_job, run_or_reuse
from transfuse.tracking.tags import HASH_TAG, RECIPE_TAG

if TYPE_CHECKING:
    from transfuse.fusion.methods import FusionMethod
    from transfuse.fusion.pool import Pool

log = logging.getLogger("transfuse")
register_resolvers()


def method_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """One config per method of ``cfg.fusion_method`` (a ``{name: method config}`` node), each holding only its
    own method and tagged with its name: every method is its own run, with its own config hash."""
    if not cfg.fusion_method:
        raise ConfigError("fusion_method is empty: name one, e.g. fusion_method=logit_mean, or a list [a,b]")
    configs = {}
    for name in cfg.fusion_method:
        one = cfg.copy()
        with open_dict(one):
            one.fusion_method = {name: cfg.fusion_method[name]}
            one.tags.method = name
        configs[name] = one
    return configs


def fuse(cfg: DictConfig) -> dict[str, float]:
    """Fuse the members on ``cfg.data`` with each method of ``cfg.fusion_method``, one run per method.

    The members are loaded and run over the data once, however many methods there are. Returns the logged
    metrics of the single method, or, with several, of the one with the best ``return_metric``.
    """
    from transfuse.tracking.store import check_reachable

    check_reachable(cfg.logger.tracking_uri)  # a server that does not answer: one line before the slow imports
    import lightning as L
    from hydra.utils import instantiate

    from transfuse.fusion.members import find_members, load_member, load_source
    from transfuse.fusion.pool import Pool
    from transfuse.models.build import build_model
    from transfuse.tracking.datasets import run_inputs
    from transfuse.tracking.store import open_store

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    configs = method_configs(cfg)
    datamodule = instantiate(cfg.data)
    class_names = datamodule.class_names
    methods = {name: instantiate(one.fusion_method[name]) for name, one in configs.items()}
    if any(m.trains_student for m in methods.values()):  # a wrong student (unknown backbone.name) fails here
        build_model(cfg, class_names, teacher=lambda raw: raw)
    client = open_store(cfg.logger.tracking_uri)
    runs = find_members(client, cfg.pool.runs, cfg.pool.filter, cfg.pool.experiments)
    members = [load_member(client, r, class_names) for r in runs]
    source = load_source(client, members, class_names) if any(m.needs_source for m in methods.values()) else None
    splits = datamodule.splits
    images, labels = {s: splits[s].images for s in splits}, {s: splits[s].labels for s in splits}
    pool = Pool.predict(members, images, labels, source)
    inputs = run_inputs(client, datamodule, cfg.tags, True, [r.info.run_id for r in runs])  # once, for every method
    results = {
        name: run_or_reuse(one, lambda c, name=name: fuse_one(c, methods[name], pool, runs, datamodule, inputs))
        for name, one in configs.items()
    }
    return max(results.values(), key=lambda metrics: metrics.get(cfg.return_metric, -math.inf))


def fuse_one(
    cfg: DictConfig, method: FusionMethod, pool: Pool, runs: list, datamodule: object, inputs: list
) -> dict[str, float]:
    """One method's run: fuse the pool, score the result beside the members, log it (and its weights)."""
    from transfuse.fusion.evaluate import fused_metrics
    from transfuse.fusion.students import Students
    from transfuse.models.summary import summarise_predictions
    from transfuse.tracking import artifacts
    from transfuse.tracking.run import tracked_run

    class_names = datamodule.class_names
    tags = {**cfg.tags, HASH_TAG: config_hash(cfg), RECIPE_TAG: recipe_hash(cfg)}
    with tracked_run(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.run_name, tags) as run:
        run.log_config(cfg)
        run.log_members(runs)
        run.log_datasets(inputs)
        students = Students(cfg, datamodule, run)
        log.info("fusing %d members with %s", len(pool.members), type(method).__name__)
        fused = method.fuse(pool, students)
        metrics = fused_metrics(fused, pool, len(class_names), cfg.cost.latency_batches, cfg.cost.repeats)
        run.log_metrics(metrics)
        if cfg.logger.plots:  # confusion matrix and reliability of the fused test predictions, as a run draws them
            test_logits, test_labels = fused.logits["test"], pool.labels["test"]
            summary = summarise_predictions(test_logits, test_labels, len(class_names), cfg.model.ece_bins)
            artifacts.log_plots(run, summary, class_names, curves=bool(students.trained))
        if fused.state_dict is not None:
            artifacts.log_state_dict(run, fused.state_dict, class_names)
    log.info(fusion_table(f"results of run {run.name}:", metrics, [r.info.run_name for r in runs]))
    return metrics


SUMMARY = "Fuse trained runs (ensembles, soups, feature heads, distillation) on a dataset, tracked in MLflow."


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="fuse")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.return_metric`` for sweepers (NaN when missing)."""
    quiet_libraries()
    return run_job(cfg, fuse, cfg.return_metric, "transfuse-fuse", reuse=False)


def main() -> None:
    """The ``transfuse-fuse`` command: a fast ``--help`` of the groups it takes, else Hydra."""
    if not print_help_if_asked("transfuse-fuse", "fuse", SUMMARY):
        launch("transfuse-fuse", "fuse", _hydra_main)


if __name__ == "__main__":
    main()
