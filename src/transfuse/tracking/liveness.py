"""Whether a run's process is still alive, and which unfinished run a relaunch should resume.

A run carries its host, process id and a ``heartbeat`` tag refreshed every :data:`HEARTBEAT_S` seconds, so a
relaunch can tell a run whose process is gone (same host: the process id is dead; another host: the heartbeat
stopped) from one that still runs. Only MLflow is imported (no torch), so the clean-up command stays light.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from transfuse.tracking.tags import HASH_TAG, HEARTBEAT_TAG, HOST_TAG, PID_TAG, PREEMPTED_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

#: seconds between two heartbeats
HEARTBEAT_S = 30.0
#: a RUNNING run on another host whose heartbeat is older than this is taken as abandoned
STALE_AFTER_S = 180.0


class Heartbeat:
    """Refreshes the run's ``heartbeat`` tag from a daemon thread until stopped; an unreachable store only
    delays it (the training thread never waits for it)."""

    def __init__(self, client: MlflowClient, run_id: str, every_s: float = HEARTBEAT_S) -> None:
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="transfuse-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.client.set_tag(self.run_id, HOST_TAG, socket.gethostname())
        self.client.set_tag(self.run_id, PID_TAG, str(os.getpid()))
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception as err:  # the store is down: try again at the next beat
                log.debug("heartbeat of run %s not sent: %s", self.run_id, err)

    def stop(self) -> None:
        self._stop.set()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def abandoned(run: Run, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why ``run`` can be resumed (its process is gone, or it was preempted), or None if it cannot."""
    tags, status = run.data.tags, run.info.status
    if tags.get(PREEMPTED_TAG) == "true" and status in ("KILLED", "FAILED", "RUNNING"):
        return "preempted"
    if status != "RUNNING":
        return None
    now = time.time() if now is None else now
    if tags.get(HOST_TAG) == socket.gethostname() and tags.get(PID_TAG, "").isdigit():
        return None if _process_alive(int(tags[PID_TAG])) else f"its process {tags[PID_TAG]} is gone"
    beat = float(tags.get(HEARTBEAT_TAG, "0") or 0)
    if now - beat > stale_after_s:
        return f"its heartbeat stopped {now - beat:.0f} s ago"
    return None


def find_resumable(client: MlflowClient, experiment_name: str, digest: str) -> tuple[Run, str] | None:
    """The newest unfinished run of this experiment and config hash that can be resumed, with the reason."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.{HASH_TAG} = '{digest}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        reason = abandoned(run)
        if reason:
            return run, reason
    return None


def resume_target(client: MlflowClient, resume: object, experiment_name: str, digest: str) -> Run | None:
    """The run a launch continues: ``resume=<run id>`` names it; ``resume=true`` picks an abandoned or preempted
    run of the same config hash (see :func:`abandoned`); ``resume=false`` never resumes.

    Raises:
        TransfuseError: ``resume`` names a run that does not exist or already FINISHED.
    """
    from mlflow.exceptions import MlflowException

    from transfuse.errors import ConfigError

    if resume is False or resume is None or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume is True or str(resume).lower() == "true":
        found = find_resumable(client, experiment_name, digest)
        if found is None:
            return None
        run, reason = found
        log.info("resuming run %s (%s): %s", run.info.run_id, run.info.run_name, reason)
        return run
    try:
        run = client.get_run(str(resume))
    except MlflowException:
        raise ConfigError(f"resume={resume}: no MLflow run with that id in {client.tracking_uri}") from None
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume={resume}: run {run.info.run_name} already FINISHED; nothing to resume")
    return run
