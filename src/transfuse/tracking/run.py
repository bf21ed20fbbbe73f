"""The lifecycle of one MLflow run: config, tags, lineage, and a status that is never left RUNNING.

A run records plain values (ids, names, counts): it does not know how weights were loaded or models built.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, Param, Run, RunStatus
from omegaconf import DictConfig, OmegaConf

from transfuse.errors import Preempted
from transfuse.ranks import is_rank_zero
from transfuse.tracking.environment import ARTIFACT as ENVIRONMENT_ARTIFACT
from transfuse.tracking.environment import environment_tags, environment_text
from transfuse.tracking.liveness import Heartbeat
from transfuse.tracking.relocate import misplaced
from transfuse.tracking.sender import Sender
from transfuse.tracking.store import artifact_location, open_store, sqlite_path, store_lock
from transfuse.tracking.tags import PREEMPTED_TAG, RESUMED_TAG, SOURCE_RUN_TAG, SOURCE_TAG, SWEEPS_TAG

if TYPE_CHECKING:
    from transfuse.tracking.logger import RunLogger

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
#: a run's page in the MLflow UI; ``workflowType`` opens the model-training view (MLflow 3 opens in its GenAI mode)
RUN_PAGE = "#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
#: where ``mlflow ui`` serves by default
LOCAL_UI = "http://127.0.0.1:5000"


def tag_value(value: object) -> str:
    """A tag as its config spells it: booleans ``true``/``false`` (as in YAML and on the command line, so that
    ``tags.finetuned = 'true'`` finds what ``stage.fit=true`` set), anything else ``str``.

    >>> tag_value(True), tag_value(0.5), tag_value("a")
    ('true', '0.5', 'a')
    """
    return str(value).lower() if isinstance(value, bool) else str(value)


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
    repo = Path(__file__).resolve().parents[3]
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


def ui_lines(tracking_uri: str, experiment_id: str, run_id: str) -> list[str]:
    """How to open a run in the MLflow UI: its page on a tracking server; for a local store, the ``mlflow ui``
    command to start (with the store's absolute path, so it works from any folder) and the page it will serve.

    >>> ui_lines("http://host:5000", "1", "abc")
    ['http://host:5000/#/experiments/1/runs/abc?workflowType=machine_learning']
    """
    page = RUN_PAGE.format(experiment_id=experiment_id, run_id=run_id)
    shown = re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", tracking_uri)  # a password in the URI is not printed
    if tracking_uri.startswith(("http://", "https://")):
        return [f"{shown.rstrip('/')}/{page}"]
    if tracking_uri.startswith("databricks"):  # no local UI to start
        return []
    database = sqlite_path(tracking_uri)
    if database is not None:
        store = f"sqlite:///{database}"
    elif "://" not in tracking_uri or tracking_uri.startswith("file:"):  # a folder of runs (file store)
        store = Path(tracking_uri.removeprefix("file://")).expanduser().resolve().as_uri()
    else:
        store = shown
    return [f"mlflow ui --backend-store-uri {shlex.quote(store)}", f"{LOCAL_UI}/{page}"]


def hydra_tags() -> dict[str, str]:
    """Overrides and, in multirun, the sweep id and job number of the current Hydra job (if any)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = {"overrides": " ".join(hc.overrides.task)}
    if hc.mode == RunMode.MULTIRUN:
        tags["sweep_id"] = tags[SWEEPS_TAG] = str(hc.sweep.dir)  # ``sweeps`` grows when a relaunch reuses the run
        tags["sweep_job"] = str(hc.job.num)
    return tags


class TrackedRun:
    """An open MLflow run, with the helpers the training flow calls."""

    #: whether this process writes to the run: rank 0 does; the other processes of a DDP job get a PassiveRun
    is_writer = True

    def __init__(
        self, client: MlflowClient, run_id: str, experiment_id: str, sender: Sender | None = None, name: str = ""
    ) -> None:
        self.client, self.run_id, self.experiment_id, self.name = client, run_id, experiment_id, name
        #: writes made during a fit go through it, so an unreachable server does not block training
        self.sender = sender or Sender(client.tracking_uri)
        #: metrics logged through :meth:`log_metrics`, returned with the run's results
        self.logged_scores: dict[str, float] = {}

    def logger(self, **kwargs: Any) -> RunLogger:
        """A Lightning logger writing this run's metrics (``kwargs``: ``logger.metrics`` of the config)."""
        from transfuse.tracking.logger import RunLogger  # Lightning: only for runs that train or test

        return RunLogger(tracking_uri=self.client.tracking_uri, run_id=self.run_id, sender=self.sender, **kwargs)

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

    def log_datasets(self, inputs: Sequence[DatasetInput]) -> None:
        """Attach datasets (see :mod:`transfuse.tracking.datasets`): the UI's Datasets column and filter."""
        if inputs:
            self.client.log_inputs(self.run_id, datasets=list(inputs))

    def log_source(
        self,
        source: str,
        source_run_id: str | None = None,
        head_reinitialised: bool = False,
        missing: int = 0,
        unexpected: int = 0,
        prefix: str = "init",
    ) -> None:
        """Record the weights a run started from, linking to the source run when there is one.

        ``prefix`` names what was initialised: ``init`` for the model, ``init.branch.<i>`` for one branch.
        """
        if prefix != "init":
            self.client.set_tag(self.run_id, prefix, source)
            return
        self.client.set_tag(self.run_id, SOURCE_TAG, source)
        self.client.set_tag(self.run_id, "init.head_reinitialised", str(head_reinitialised).lower())
        self.client.log_metric(self.run_id, "init/missing_keys", missing)
        self.client.log_metric(self.run_id, "init/unexpected_keys", unexpected)
        if source_run_id:
            parent = self.client.get_run(source_run_id)
            self.client.set_tag(self.run_id, SOURCE_RUN_TAG, source_run_id)
            link = RUN_PAGE.format(experiment_id=parent.info.experiment_id, run_id=source_run_id)
            self.client.set_tag(
                self.run_id,
                "mlflow.note.content",
                f"Initialised from run [{parent.info.run_name}]({link}) (`{source}`).",
            )

    def log_members(self, runs: Sequence[Run]) -> None:
        """Tag a fusion with its member runs (``members``, ``member.<i>``) and link them in its description."""
        self.client.set_tag(self.run_id, "members", ",".join(r.info.run_id for r in runs))
        self.client.set_tag(self.run_id, "member_count", str(len(runs)))
        links = []
        for i, member in enumerate(runs):
            self.client.set_tag(self.run_id, f"member.{i}", member.info.run_id)
            link = RUN_PAGE.format(experiment_id=member.info.experiment_id, run_id=member.info.run_id)
            links.append(f"{i}. [{member.info.run_name}]({link}) `{member.info.run_id}`")
        self.client.set_tag(self.run_id, "mlflow.note.content", "Fusion of:\n\n" + "\n".join(links))


class PassiveRun(TrackedRun):
    """The run as the other processes of a multi-process job see it: they compute with rank 0 and write nothing
    (no run, tag, metric, artifact or heartbeat), so one job is one MLflow run whatever the number of processes."""

    is_writer = False

    def __init__(self, tracking_uri: str) -> None:
        self.client, self.run_id, self.experiment_id, self.name = MlflowClient(tracking_uri), "", "", ""
        self.sender = None  # type: ignore[assignment]
        self.logged_scores = {}

    def logger(self, **kwargs: Any) -> RunLogger:
        from transfuse.tracking.logger import RunLogger

        return RunLogger(tracking_uri=self.client.tracking_uri, **kwargs)  # Lightning logs only on rank 0

    def log_config(self, cfg: DictConfig) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self.logged_scores.update({key: float(value) for key, value in metrics.items()})

    def log_datasets(self, inputs: Sequence[DatasetInput]) -> None:
        pass

    def log_source(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_members(self, runs: Sequence[Run]) -> None:
        pass


@contextmanager
def tracked_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[TrackedRun]:
    """Open a run and always close it: FINISHED on success, KILLED when stopped (Ctrl+C, preemption; a preempted
    run is tagged ``preempted``), FAILED with the error as a tag otherwise. ``resume_run_id`` reopens that run
    (a relaunch resuming a killed job) instead of creating one. While open, the run carries a heartbeat.
    In a process other than rank 0 of a multi-process job, nothing is opened: it gets a :class:`PassiveRun`."""
    if not is_rank_zero():
        yield PassiveRun(tracking_uri)
        return
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
    if experiment is not None and misplaced(tracking_uri, experiment_name, experiment.artifact_location):
        log.warning(
            "experiment %r keeps its artifacts in %s, outside this store's folder (a copied store?); "
            "`transfuse-runs relocate --tracking-uri %s` moves them beside it",
            experiment_name,
            experiment.artifact_location,
            tracking_uri,
        )
    commit = git_commit()
    all_tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "command": shlex.join(sys.argv),
        "mlflow.source.name": Path(sys.argv[0]).name,  # the entry point, in the UI's Source column
        "mlflow.source.type": "LOCAL",
        **environment_tags(),
        **hydra_tags(),
        **{k: tag_value(v) for k, v in (tags or {}).items() if v is not None},  # unset (e.g. study_run): no tag
    }
    if resume_run_id is None:
        created = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info
        run_id, name = created.run_id, created.run_name
        opened = f"run {name} ({run_id}) in experiment {experiment_name}"
    else:
        run_id = resume_run_id
        previous = client.get_run(run_id)
        client.update_run(run_id, status="RUNNING")
        times = int(previous.data.tags.get(RESUMED_TAG, "0")) + 1
        for key, value in {**all_tags, RESUMED_TAG: str(times), PREEMPTED_TAG: "false"}.items():
            client.set_tag(run_id, key, value)
        name = previous.info.run_name
        opened = f"run {name} ({run_id}) in experiment {experiment_name}, resumed (time {times})"
    client.log_text(run_id, environment_text(), ENVIRONMENT_ARTIFACT)
    log.info("\n  ".join([opened, *ui_lines(tracking_uri, experiment_id, run_id)]))
    heartbeat = Heartbeat(client, run_id).start()
    run = TrackedRun(client, run_id, experiment_id, name=name)
    try:
        yield run
    except BaseException as err:
        stopped = not isinstance(err, Exception)  # KeyboardInterrupt, Preempted, SystemExit
        status = RunStatus.to_string(RunStatus.KILLED if stopped else RunStatus.FAILED)
        try:
            heartbeat.stop()
            run.sender.close()  # what was queued (a preempted fit's checkpoint) lands before the status
            flush_queued(client)  # metrics queued by an asynchronous logger land before the status
            client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:MAX_PARAM_LENGTH])
            if isinstance(err, Preempted):
                client.set_tag(run_id, PREEMPTED_TAG, "true")
        finally:
            client.set_terminated(run_id, status)
        raise
    heartbeat.stop()
    run.sender.close()
    flush_queued(client)
    client.set_terminated(run_id, "FINISHED")


def flush_queued(client: MlflowClient) -> None:
    """Land what an asynchronous logger (``logger.metrics.synchronous=false``) queued for the run's own store.

    ``mlflow.flush_async_logging()`` flushes the process's default store instead: another queue, and with no
    ``MLFLOW_TRACKING_URI`` it creates ``./mlflow.db`` in the working directory, unlocked, from every job of a
    parallel sweep at once. MLflow keeps one store object per URI, so the client's store holds the queue.
    """
    client._tracking_client.store.flush_async_logging()
