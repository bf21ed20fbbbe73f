"""``transfuse-fuse``: fuse trained runs (ensembles, soups, students) on a target dataset, tracked in MLflow.

The flow mirrors ``transfuse-train``: compose the config, instantiate the data and the method, load the
member runs named by ``pool.runs`` or ``pool.filter`` (before any run opens, so a wrong member leaves none),
fuse, and log the fused metrics next to every member's (``member/<i>/test/acc``), with the cost of the fused
model and any fusion weights; soups and students are saved as ``checkpoints/best.ckpt`` so that
``init.weights=runs:/<fusion run>`` starts training from them. With ``tasks=``, a multi-task merge: one member
per task, one merged backbone scored with each task's own head (:mod:`transfuse.fusion.tasks`), each task's
network saved as ``checkpoints/<task>.ckpt``. Torch, Lightning and MLflow are imported inside
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
    from transfuse.fusion.tasks import TaskPool

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
    """Fuse the members on ``cfg.data`` (or merge one member per task of ``cfg.tasks``) with each method of
    ``cfg.fusion_method``, one run per method.

    The members are loaded and run over the data once, however many methods there are. Returns the logged
    metrics of the single method, or, with several, of the one with the best ``return_metric``.
    """
    from transfuse.tracking.store import check_reachable

    check_reachable(cfg.logger.tracking_uri)  # a server that does not answer: one line before the slow imports
    import lightning as L
    from hydra.utils import instantiate

    from transfuse.fusion.methods import Individual
    from transfuse.models.build import build_model
    from transfuse.tracking.store import open_store

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    configs = method_configs(cfg)
    methods = {name: instantiate(one.fusion_method[name]) for name, one in configs.items()}
    for name, method in methods.items():
        if cfg.tasks and not method.multi_task:
            raise ConfigError(
                f"fusion_method={name} fuses members of one dataset; with tasks= (multi-task merging) choose from "
                "individual, uniform_soup, greedy_soup, task_arithmetic, ties, fisher"
            )
        if not cfg.tasks and isinstance(method, Individual):
            raise ConfigError("fusion_method=individual scores each task's own member: give the tasks with tasks=")
    client = open_store(cfg.logger.tracking_uri)
    needs_source = any(m.needs_source for m in methods.values())
    if cfg.tasks:
        pool, runs, inputs, data = task_pool(cfg, client, needs_source)
    else:
        datamodule = instantiate(cfg.data)
        if any(m.trains_student for m in methods.values()):  # a wrong student (unknown backbone.name) fails here
            build_model(cfg, datamodule.class_names, teacher=lambda raw: raw)
        pool, runs, inputs = single_pool(cfg, client, datamodule, needs_source)
        data = datamodule
    for method in methods.values():  # members a method cannot fuse (another architecture...): no run opens
        method.check(pool)
    results = {
        name: run_or_reuse(one, lambda c, name=name: fuse_one(c, methods[name], pool, runs, data, inputs))
        for name, one in configs.items()
    }
    return max(results.values(), key=lambda metrics: metrics.get(cfg.return_metric, -math.inf))


def single_pool(cfg: DictConfig, client: object, datamodule: object, needs_source: bool) -> tuple:
    """The members of ``pool`` on one dataset, their logits computed once, and the run's dataset inputs."""
    from transfuse.fusion.members import find_members, load_member, load_source
    from transfuse.fusion.pool import Pool
    from transfuse.tracking.datasets import run_inputs

    class_names = datamodule.class_names
    runs = find_members(client, cfg.pool.runs, cfg.pool.filter, cfg.pool.experiments)
    members = [load_member(client, r, class_names) for r in runs]
    source = load_source(client, members, class_names) if needs_source else None
    splits = datamodule.splits
    images, labels = {s: splits[s].images for s in splits}, {s: splits[s].labels for s in splits}
    inputs = run_inputs(client, datamodule, cfg.tags, True, [r.info.run_id for r in runs])  # once, for every method
    return Pool.predict(members, images, labels, source), runs, inputs


def task_datamodules(cfg: DictConfig) -> dict[str, object]:
    """Each task's datamodule, from its preset and overrides (``tasks=`` items as ``data=mix`` takes its
    sources), resolved against this job's config as ``data=<preset>`` would be."""
    from hydra.utils import instantiate

    from transfuse.data.mix import source_specs, with_overrides

    modules = {}
    for spec in source_specs(cfg.tasks, what="tasks"):
        one = cfg.copy()
        with open_dict(one):
            one.data = with_overrides(spec, what="tasks")
        modules[spec.name] = instantiate(one.data)
    return modules


def task_pool(cfg: DictConfig, client: object, needs_source: bool) -> tuple:
    """One member per task (matched by the digest of the data it trained on), each task's data and the member's
    logits on it, and the run's dataset inputs: every task's data (``eval``) and what the members' source saw."""
    from mlflow.entities import DatasetInput, InputTag

    from transfuse.fusion.members import find_members, load_member, load_source
    from transfuse.fusion.tasks import TaskPool, match_members
    from transfuse.tracking.datasets import CONTEXT_TAG, dataset_entity, with_sources

    modules = task_datamodules(cfg)
    entities = {name: dataset_entity(dm, name) for name, dm in modules.items()}
    runs = find_members(client, cfg.pool.runs, cfg.pool.filter, cfg.pool.experiments)
    runs = match_members(list(modules), [e.digest for e in entities.values()], runs, client)
    members = [load_member(client, r, dm.class_names) for r, dm in zip(runs, modules.values(), strict=True)]
    first = next(iter(modules.values()))
    source = load_source(client, members, first.class_names) if needs_source else None
    pool = TaskPool.predict(list(modules), members, list(modules.values()), source)
    own = [DatasetInput(e, [InputTag(CONTEXT_TAG, "eval")]) for e in entities.values()]
    return pool, runs, with_sources(client, own, [r.info.run_id for r in runs]), modules


def fuse_one(
    cfg: DictConfig, method: FusionMethod, pool: Pool | TaskPool, runs: list, data: object, inputs: list
) -> dict[str, float]:
    """One method's run: fuse the pool, score the result beside the members, log it (and its weights)."""
    from transfuse.fusion.evaluate import fused_metrics, task_metrics
    from transfuse.fusion.students import Students
    from transfuse.fusion.tasks import TaskPool
    from transfuse.models.summary import summarise_predictions
    from transfuse.tracking import artifacts
    from transfuse.tracking.run import tracked_run

    tags = {**cfg.tags, HASH_TAG: config_hash(cfg), RECIPE_TAG: recipe_hash(cfg)}
    with tracked_run(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg.run_name, tags) as run:
        run.log_config(cfg)
        run.log_members(runs)
        run.log_datasets(inputs)
        log.info("fusing %d members with %s", len(pool.members), type(method).__name__)
        batches, repeats = cfg.cost.latency_batches, cfg.cost.repeats
        if isinstance(pool, TaskPool):
            fused = method.fuse(pool)
            metrics = task_metrics(fused, pool, batches, repeats)
            run.log_metrics(metrics)
            for task in pool.tasks:  # the merged backbone with each task's head: init.weights=runs:/<id>/<this>
                if fused.task_states is not None:
                    artifacts.log_state_dict(run, fused.task_states[task.name], task.class_names, f"{task.name}.ckpt")
        else:
            class_names = data.class_names
            students = Students(cfg, data, run)
            fused = method.fuse(pool, students)
            metrics = fused_metrics(fused, pool, len(class_names), batches, repeats)
            run.log_metrics(metrics)
            if cfg.logger.plots:  # confusion matrix and reliability of the fused test predictions, as a run draws them
                test_logits, test_labels = fused.logits["test"], pool.labels["test"]
                summary = summarise_predictions(test_logits, test_labels, len(class_names), cfg.model.ece_bins)
                artifacts.log_plots(run, summary, class_names, curves=bool(students.trained))
            if fused.state_dict is not None:
                artifacts.log_state_dict(run, fused.state_dict, class_names)
    log.info(fusion_table(f"results of run {run.name}:", metrics, [r.info.run_name for r in runs]))
    return metrics


SUMMARY = (
    "Fuse trained runs (ensembles, soups, feature heads, distillation) on a dataset, or merge one member per task"
    " (tasks=[...]) into one backbone, tracked in MLflow."
)


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
