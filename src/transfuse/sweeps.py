"""Resumable sweeps: every job carries a hash of its resolved config; a relaunched sweep skips the jobs whose
twin (same hash, same experiment) already FINISHED and reruns the failed or missing ones.

The hash covers what decides a result (data, model, strategy, optimiser, seed, tags such as ``study_run``)
and leaves out where the outputs go and how they are logged, so the same command relaunched tomorrow hashes
the same. It does not cover the code: after changing the code, relaunch with ``resume=false``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from transfuse.errors import Preempted, TransfuseError
from transfuse.launch import job_failed
from transfuse.overrides import check_job_overrides
from transfuse.ranks import is_rank_zero
from transfuse.tracking.tags import HASH_TAG, RECIPE_TAG, SWEEPS_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

#: config keys that change where or how a run is recorded, not its result
NOT_HASHED = (
    "paths",
    "run_name",
    "logger",
    "resume",
    "checkpoint",
    "print_config",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "callbacks.model_checkpoint.dirpath",
)
#: what ``seed`` becomes in the config that :func:`recipe_hash` hashes
SEED_SENTINEL = "<seed>"
__all__ = ["HASH_TAG", "RECIPE_TAG", "SWEEPS_TAG", "config_hash", "recipe_hash", "run_job", "run_or_reuse"]


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config without :data:`NOT_HASHED` keys.

    Hydra's output directory is replaced by a placeholder wherever another value interpolates it.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    output_dir = str(container.get("paths", {}).get("output_dir", "")) or None
    for dotted in NOT_HASHED:
        *parents, leaf = dotted.split(".")
        node: Any = container
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = json.dumps(_without(container, output_dir), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_hash(cfg: DictConfig) -> str:
    """:func:`config_hash` of the config with its seed taken out: runs that differ only in the seed share it.

    ``seed`` is replaced before interpolations resolve, so every value built from it (``tags.seed``,
    ``data.subset_seed``, the run name, a ``source_query`` that picks the source of the same seed) is the same
    for every seed. A report groups the runs of a cell by it to tell seeds of one recipe from different recipes.
    """
    unseeded = copy.deepcopy(cfg)
    with read_write(unseeded), open_dict(unseeded):
        unseeded.seed = SEED_SENTINEL
    return config_hash(unseeded)


def _without(value: Any, output_dir: str | None) -> Any:
    if isinstance(value, Mapping):
        return {k: _without(v, output_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_without(v, output_dir) for v in value]
    if output_dir and isinstance(value, str) and output_dir in value:
        return value.replace(output_dir, "<output_dir>")
    return value


def finished_twin(client: MlflowClient, experiment_name: str, digest: str) -> Run | None:
    """The newest FINISHED run of the experiment with this config hash, if any."""
    from transfuse.tracking.query import finished_runs  # MLflow: only when a sweep job may be skipped

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    runs = finished_runs(client, [experiment.experiment_id], f"tags.{HASH_TAG} = '{digest}'", max_results=1)
    return runs[0] if runs else None


def reuse(client: MlflowClient, twin: Run, sweep_id: str | None) -> dict[str, float]:
    """Record that ``sweep_id`` reused ``twin`` (so a report by sweep id finds it) and return its metrics."""
    if sweep_id:
        sweeps = twin.data.tags.get(SWEEPS_TAG, "").split()
        if sweep_id not in sweeps:
            client.set_tag(twin.info.run_id, SWEEPS_TAG, " ".join([*sweeps, sweep_id]))
    log.info(
        "skipped: run %s (%s) already FINISHED with this config; resume=false runs it again",
        twin.info.run_id,
        twin.info.run_name,
    )
    return dict(twin.data.metrics)


def multirun_sweep() -> str | None:
    """The sweep directory of the current Hydra multirun job (its sweep id), None outside a multirun."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)


def run_or_reuse(
    cfg: DictConfig, task: Callable[[DictConfig], dict[str, float]], sweep_id: str | None = None
) -> dict[str, float]:
    """Run ``task(cfg)``, unless this is a sweep job (``sweep_id``, by default Hydra's multirun sweep) with
    ``resume`` on whose config already FINISHED in the same experiment: then return that run's metrics.

    Single runs always run: typing the command again means "run it again".
    """
    sweep_id = sweep_id or multirun_sweep()
    if sweep_id is not None and cfg.get("resume", False):
        from transfuse.tracking.store import open_store

        client = open_store(cfg.logger.tracking_uri)
        twin = finished_twin(client, cfg.logger.experiment_name, config_hash(cfg))
        if twin is not None:
            return reuse(client, twin, sweep_id)
    return task(cfg)


#: the signals a scheduler sends ahead of a job's time limit (``sbatch --signal``); SIGTERM is a preemption
TIME_LIMIT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def _would_repeat(signum: int, progressed: bool | None) -> bool:
    """A time limit that came before this launch saved any checkpoint: its epochs are longer than the time the
    job has, so each requeue would start over from the same checkpoint, forever."""
    return progressed is False and signum in TIME_LIMIT_SIGNALS


def _requeue(signum: int, progressed: bool | None = None) -> int:
    """Ask the scheduler running this preempted job to queue it again (unless :func:`_would_repeat`); returns the
    status the job exits with.

    Called once the run has ended KILLED with its checkpoint uploaded, so the requeued job never races this one
    for the run. Under Slurm: ``scontrol requeue``, what submitit's own SIGUSR2 handler does (the Preemption
    callback takes that signal over during the fit, as that handler would exit mid-batch), then 128 + signum.
    Under submitit's local executor, its time-limit signal (SIGUSR2) ends the job with the status on which its
    controller starts the job again, the local stand-in for a Slurm requeue; SIGTERM or SIGUSR1 there is someone
    stopping the job, which stays stopped.
    """
    if _would_repeat(signum, progressed):
        return 128 + signum
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

        return LOCAL_REQUEUE_RETURN_CODE if signum == signal.SIGUSR2 else 128 + signum
    job = os.environ.get("SLURM_JOB_ID")
    if job and shutil.which("scontrol") and is_rank_zero():  # one request per job, as submitit's handler does
        subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, timeout=30)
    return 128 + signum


def input_error(err: BaseException) -> TransfuseError | None:
    """The :class:`TransfuseError` behind ``err``: itself, or the cause Hydra's ``instantiate`` wrapped in an
    ``InstantiationException`` (a constructor refusing a config value), else None (a bug: keep the traceback)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, TransfuseError):
            return current
        if not isinstance(current, InstantiationException):
            return None
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_job(
    cfg: DictConfig,
    task: Callable[[DictConfig], dict[str, float]],
    return_metric: str,
    prog: str,
    reuse: bool = True,
) -> float:
    """What every entry point does with one Hydra job: run or reuse it and return ``return_metric`` for
    sweepers (NaN when the run has none). An input error ends a single run with one line naming ``prog``;
    in a multirun it is one line naming the job, and the other jobs still run. ``reuse=False``
    leaves the skip check to the task (``transfuse-fuse`` checks each of its runs)."""
    try:
        check_job_overrides(cfg)  # a typo taken as a new key (+optimzer.lr=0.1) would be silently ignored
        metrics = run_or_reuse(cfg, task) if reuse else task(cfg)
    except Preempted as err:
        status = _requeue(err.signum, err.progressed)
        if _would_repeat(err.signum, err.progressed):
            print(
                f"{prog}: preempted ({err}) before this launch saved a checkpoint, so not requeued (it would only "
                "repeat): give the job more time (hydra.launcher.timeout_min) or shorter epochs "
                "(trainer.limit_train_batches), then relaunch the same command to resume",
                file=sys.stderr,
            )
        else:
            print(
                f"{prog}: preempted ({err}): the run saved its last full checkpoint; relaunch the same command to "
                "resume",
                file=sys.stderr,
            )
        raise SystemExit(status) from None
    except Exception as err:
        cause = input_error(err)
        if cause is None:
            raise
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            job = HydraConfig.get()
            job_failed(f"{prog}: job {job.job.num} ({' '.join(job.overrides.task)}) failed: {cause}")
            return math.nan  # the sweep goes on; the command exits 1 at its end (transfuse.launch)
        sys.exit(f"{prog}: error: {cause}")
    value = metrics.get(return_metric, math.nan)
    if return_metric in metrics:  # the run's result table already showed it; a sweeper's log keeps it
        log.debug("%s = %.4f", return_metric, value)
    return value
