"""One MLflow run per task: config, tags, lineage, checkpoints, and a status that is never left RUNNING.

Lightning's ``MLFlowLogger`` is used only to send metrics into a run this module owns: it would otherwise end
the run after ``fit`` (before ``test``) and upload checkpoints with ``log_model``, which fails on SQLite
stores (Lightning issue 19441).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import torch
from filelock import FileLock
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus
from omegaconf import DictConfig, OmegaConf

from transfuse.weights import Checkpoint, LoadReport

if TYPE_CHECKING:
    from transfuse.models.summary import PredictionSummary

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000

#: lines of ``plots/learning_curves.png``: panel -> line -> metric keys, of which the first one logged is drawn
CURVE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "loss": {"train": ("train/loss_epoch", "train/loss"), "val": ("val/loss",)},
    "accuracy": {"train": ("train/acc",), "val": ("val/acc",)},
}


class RunLogger(MLFlowLogger):
    """Logs metrics into an existing run and leaves ending it to :func:`tracked_run`.

    Metrics are written in batches at most every ``flush_every_s`` seconds (and when Lightning finalises the
    logger after fit or test, on success or failure): one SQLite commit per logging call costs several
    milliseconds, more than a cached linear-probe training step.
    """

    def __init__(self, *args: Any, flush_every_s: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._flushed_at = time.monotonic()
        #: first key segment -> logged name (``{"test": "test_last"}`` while the last-epoch weights are tested)
        self.renames: dict[str, str] = {}

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp_ms = int(time.time() * 1000)
        for key, value in metrics.items():
            name = re.sub(r"[^a-zA-Z0-9_/. -]+", "", key)  # the characters MLflow allows in metric names
            split, _, rest = name.partition("/")
            if rest and split in self.renames:
                name = f"{self.renames[split]}/{rest}"
            self._pending.append(Metric(key=name, value=float(value), timestamp=timestamp_ms, step=step or 0))
        if time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Write every pending metric now (MLflow takes at most 1000 per batch)."""
        for start in range(0, len(self._pending), 1000):
            batch = self._pending[start : start + 1000]
            self.experiment.log_batch(self.run_id, metrics=batch, **self._log_batch_kwargs)
        self._pending.clear()
        self._flushed_at = time.monotonic()

    def finalize(self, status: str = "success") -> None:
        """Flush, but leave the run open: ``fit`` ends before ``test`` logs into the same run."""
        self.flush()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` with values cut to MLflow's parameter length.

    >>> flatten({"optimizer": {"lr": 0.1}, "tags": ["a", "b"]})
    {'optimizer.lr': '0.1', 'tags': "['a', 'b']"}
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def git_commit() -> str:
    """Commit of the transfuse checkout (``+dirty`` with uncommitted changes), or ``unknown``."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def hydra_tags() -> dict[str, str]:
    """Overrides and, in multirun, the sweep id and job number of the current Hydra job (if any)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = {"overrides": " ".join(hc.overrides.task)}
    if hc.mode == RunMode.MULTIRUN:
        tags["sweep_id"] = tags["sweeps"] = str(hc.sweep.dir)  # ``sweeps`` grows when a relaunch reuses the run
        tags["sweep_job"] = str(hc.job.num)
    return tags


class TrackedRun:
    """An open MLflow run, with the helpers the training flow calls."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        #: metrics logged through :meth:`log_metrics`, returned with the run's results
        self.logged_scores: dict[str, float] = {}

    def logger(self, **kwargs: Any) -> RunLogger:
        return RunLogger(tracking_uri=self.client.tracking_uri, run_id=self.run_id, **kwargs)

    def log_config(self, cfg: DictConfig) -> None:
        """Resolved config as parameters and as ``config.yaml``."""
        container = OmegaConf.to_container(cfg, resolve=True)
        params = [Param(k, v) for k, v in flatten(container).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.log_text(self.run_id, OmegaConf.to_yaml(container), "config.yaml")

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value)
            self.logged_scores[key] = float(value)

    def log_source(self, checkpoint: Checkpoint, report: LoadReport) -> None:
        """Record the weights a run started from, linking to the source run when there is one."""
        self.client.set_tag(self.run_id, "init.source", checkpoint.source)
        self.client.set_tag(self.run_id, "init.head_reinitialised", str(report.head_reinitialised).lower())
        self.client.log_metric(self.run_id, "init/missing_keys", len(report.missing))
        self.client.log_metric(self.run_id, "init/unexpected_keys", len(report.unexpected))
        if checkpoint.run_id:
            source = self.client.get_run(checkpoint.run_id)
            self.client.set_tag(self.run_id, "source_run_id", checkpoint.run_id)
            link = f"#/experiments/{source.info.experiment_id}/runs/{checkpoint.run_id}"
            self.client.set_tag(
                self.run_id,
                "mlflow.note.content",
                f"Initialised from run [{source.info.run_name}]({link}) (`{checkpoint.source}`).",
            )

    def log_members(self, runs: Sequence[Run]) -> None:
        """Tag a fusion with its member runs (``members``, ``member.<i>``) and link them in its description."""
        self.client.set_tag(self.run_id, "members", ",".join(r.info.run_id for r in runs))
        self.client.set_tag(self.run_id, "member_count", str(len(runs)))
        links = []
        for i, member in enumerate(runs):
            self.client.set_tag(self.run_id, f"member.{i}", member.info.run_id)
            link = f"#/experiments/{member.info.experiment_id}/runs/{member.info.run_id}"
            links.append(f"{i}. [{member.info.run_name}]({link}) `{member.info.run_id}`")
        self.client.set_tag(self.run_id, "mlflow.note.content", "Fusion of:\n\n" + "\n".join(links))

    def log_state_dict(self, state: Mapping[str, Any], class_names: Sequence[str], name: str = "best.ckpt") -> None:
        """Upload weights made outside Lightning (a soup) as ``checkpoints/<name>``, readable by ``init.weights``."""
        with tempfile.TemporaryDirectory() as staging:
            torch.save(
                {"state_dict": dict(state), "transfuse": {"class_names": list(class_names)}}, Path(staging) / name
            )
            self.client.log_artifacts(self.run_id, staging, "checkpoints")

    def log_checkpoints(self, trainer: Trainer, last: Path, last_mode: str = "weights") -> None:
        """Upload the best checkpoint and the final state as ``checkpoints/best.ckpt`` and ``checkpoints/last.ckpt``.

        The last checkpoint is written here rather than by ``ModelCheckpoint(save_last=True)``, which in
        Lightning 2.6 only refreshes it in epochs that also produced a new best checkpoint. ``last_mode`` is
        ``full`` (with optimiser state, to resume), ``weights`` or ``none``.
        """
        if last_mode not in ("full", "weights", "none"):
            raise ValueError(f"last checkpoint mode must be full, weights or none, got {last_mode!r}")
        callback = trainer.checkpoint_callback
        staged = {"best.ckpt": callback.best_model_path if callback is not None else ""}
        if last_mode != "none":
            last.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(last, weights_only=last_mode == "weights")
            staged["last.ckpt"] = str(last)
        with tempfile.TemporaryDirectory() as staging:
            for name, path in staged.items():
                if path:
                    _link_or_copy(Path(path), Path(staging) / name)
            self.client.log_artifacts(self.run_id, staging, "checkpoints")
        if callback is not None and callback.best_model_score is not None:
            self.client.log_metric(self.run_id, f"{callback.monitor}_best", float(callback.best_model_score))

    def log_plots(
        self,
        summary: PredictionSummary | None,
        class_names: Sequence[str],
        logger: RunLogger | None = None,
        curves: bool = True,
    ) -> list[str]:
        """Upload the run's figures as PNGs under ``plots/``.

        ``learning_curves.png`` is drawn from the run's metric history (none without one, e.g. an evaluation);
        ``confusion_matrix.png`` and ``reliability_diagram.png`` from ``summary`` (none without a test pass).

        Args:
            summary: the model's ``test_summary`` after the test pass to show.
            class_names: the confusion matrix's axis labels.
            logger: the run's Lightning logger, flushed first so that the history is complete.
            curves: False where the run trained nothing (a fusion's one ``val/acc`` is not a curve).

        Returns:
            The names of the files uploaded.
        """
        from transfuse.plotting import run as figures
        from transfuse.plotting import save_png

        if logger is not None:
            logger.flush()
        drawn = {}
        history = {panel: epoch_curves(self.client, self.run_id, lines) for panel, lines in CURVE_KEYS.items()}
        if curves and any(points for panel in history.values() for points in panel.values()):
            drawn["learning_curves.png"] = figures.learning_curves(history["loss"], history["accuracy"])
        if summary is not None and summary.total:
            drawn["confusion_matrix.png"] = figures.confusion_matrix(summary.confusion, class_names)
            drawn["reliability_diagram.png"] = figures.reliability_diagram(
                summary.bin_count, summary.bin_confidence, summary.bin_correct
            )
        if drawn:
            with tempfile.TemporaryDirectory() as staging:
                for name, figure in drawn.items():
                    save_png(figure, Path(staging) / name)
                self.client.log_artifacts(self.run_id, staging, "plots")
        return sorted(drawn)


def epoch_curves(
    client: MlflowClient, run_id: str, lines: Mapping[str, Sequence[str]]
) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch metric histories of a run, ``{line: [(epoch, value), ...]}`` with epochs counted from 1.

    Each line reads the first of its keys that has a history (an empty list if none does). Lightning logs
    metrics at the global step, with an ``epoch`` metric beside them that turns steps into epochs; should two
    epochs share a step, it goes to the earlier one, whose end-of-epoch metrics are logged there. Without an
    ``epoch`` history, points are numbered in order.
    """
    epoch_at: dict[int, int] = {}
    for point in client.get_metric_history(run_id, "epoch"):
        epoch_at[point.step] = min(int(point.value), epoch_at.get(point.step, int(point.value)))
    curves: dict[str, list[tuple[int, float]]] = {}
    for line, keys in lines.items():
        history: list[Metric] = []
        for key in keys:
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            if history:
                break
        curves[line] = [(epoch_at.get(m.step, i) + 1, m.value) for i, m in enumerate(history)]
    return curves


def _link_or_copy(source: Path, target: Path) -> None:
    """Stage a checkpoint under a fixed name without copying its bytes when the filesystem allows."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an inter-process lock on a SQLite store (``<db>.lock``); a no-op for a tracking server.

    SQLite serialises writes by itself (MLflow waits up to 20 s for a busy database), but creating the schema
    and creating an experiment are check-then-write sequences that parallel jobs would race on.
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock", timeout=600):
        yield


def open_store(tracking_uri: str) -> MlflowClient:
    """A client whose store exists: a new SQLite database is created (and migrated) by one process at a time."""
    with store_lock(tracking_uri):  # MlflowClient creates and migrates the schema when it is constructed
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    return client


def artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """For a SQLite store, keep artifacts in ``mlartifacts/`` beside the database file.

    MLflow would otherwise put them in ``./mlruns`` of whatever directory the command ran in.
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name)
    return (database.parent / "mlartifacts" / slug).as_uri()


@contextmanager
def tracked_run(
    tracking_uri: str, experiment_name: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[TrackedRun]:
    """Open a run and always close it: FINISHED on success, FAILED (with the error as a tag) otherwise."""
    client = open_store(tracking_uri)
    with store_lock(tracking_uri):  # two jobs of a parallel sweep must not both create the experiment
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(experiment_name, artifact_location(tracking_uri, experiment_name))
        elif experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
            experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
    commit = git_commit()
    all_tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "command": shlex.join(sys.argv),
        **hydra_tags(),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    log.info("MLflow run %s (%s) in experiment %r at %s", run_id, run_name, experiment_name, tracking_uri)
    try:
        yield TrackedRun(client, run_id, experiment_id)
    except BaseException as err:
        status = RunStatus.to_string(RunStatus.KILLED if isinstance(err, KeyboardInterrupt) else RunStatus.FAILED)
        try:
            mlflow.flush_async_logging()  # metrics queued by an asynchronous logger land before the status
            client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:MAX_PARAM_LENGTH])
        finally:
            client.set_terminated(run_id, status)
        raise
    mlflow.flush_async_logging()
    client.set_terminated(run_id, "FINISHED")
