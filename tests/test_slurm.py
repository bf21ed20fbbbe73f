"""Sweeps through submitit (conf/hydra/launcher/slurm.yaml), checked without a cluster: submitit's local executor
runs each job in its own process as a Slurm array task would, and stands in for Slurm's requeue (a job exiting
with its requeue status is started again), so the time-limit signal's path runs end to end on one machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import FAST
from transfuse.sweeps import _requeue

ROOT = Path(__file__).resolve().parents[1]
TINY = [*FAST, "trainer.max_epochs=1", "last_checkpoint=none", "logger.plots=false", "test_last=false"]


class Sweep:
    """``transfuse-train -m hydra/launcher=submitit_local <args>`` started in ``folder`` with the store
    ``folder/mlflow.db``, in a session of its own: the launcher, submitit's controllers and the jobs."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.uri = f"sqlite:///{folder}/mlflow.db"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # tests.helpers
        command = ["-m", "hydra/launcher=submitit_local", f"logger.tracking_uri={self.uri}", *args]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "transfuse.train", *command],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait(self, timeout: float = 600) -> str:
        """Wait for the command to end successfully; returns its stderr."""
        _, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err[-3000:]
        return err

    def stop(self) -> None:
        """End what is left of this sweep (after a failed check)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def runs(self) -> list:
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name("transfuse")
        return client.search_runs([experiment.experiment_id]) if experiment is not None else []


@pytest.fixture
def sweep(tmp_path: Path) -> Iterator[Callable[..., Sweep]]:
    started: list[Sweep] = []

    def start(*args: str) -> Sweep:
        started.append(Sweep(tmp_path, *args))
        return started[-1]

    yield start
    for launched in started:
        launched.stop()


class _Submitted(Exception):
    """What the test raises where submitit would call sbatch."""


def _wait_for(check: Callable[[], object], what: str, timeout: float = 300) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_slurm_launcher_submits_requeueable_jobs_warned_by_sigusr2(tmp_path, monkeypatch):
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from transfuse.config import CONF_DIR

    (tmp_path / "srun").write_text("#!/bin/sh\n")  # submitit's Slurm executor only checks that srun exists
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", ["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", "seed=0"], return_hydra_config=True
        )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    executors = []

    def submit_nothing(executor, *args):
        executors.append(executor)
        raise _Submitted  # stop before sbatch

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit_nothing)
    with pytest.raises(_Submitted):
        launcher.launch([["seed=0"]], initial_job_idx=0)
    sbatch = executors[0]._executor._make_submission_file_text("python -m submitit.core._submit", "0").splitlines()
    assert "#SBATCH --signal=USR2@300" in sbatch and "#SBATCH --requeue" in sbatch
    assert "#SBATCH --time=240" in sbatch and "#SBATCH --gpus-per-node=1" in sbatch
    assert not any(line.startswith("#SBATCH --partition") for line in sbatch)  # the user's cluster decides


def test_a_preempted_job_asks_its_scheduler_to_requeue_it(tmp_path, monkeypatch):
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    calls = tmp_path / "calls"
    (tmp_path / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert _requeue(signal.SIGUSR2) == 128 + signal.SIGUSR2 and _requeue(signal.SIGTERM) == 128 + signal.SIGTERM
    assert calls.read_text().splitlines() == ["requeue 42", "requeue 42"]
    monkeypatch.setenv("SLURM_PROCID", "1")  # another task of the job: rank 0 asks for the job
    assert _requeue(signal.SIGUSR2) == 128 + signal.SIGUSR2 and len(calls.read_text().splitlines()) == 2
    monkeypatch.delenv("SLURM_PROCID")
    # a time limit before this launch saved a checkpoint: a requeue would repeat it, forever; a preemption is not
    assert _requeue(signal.SIGUSR2, progressed=False) == 128 + signal.SIGUSR2
    assert len(calls.read_text().splitlines()) == 2
    assert _requeue(signal.SIGTERM, progressed=False) == 128 + signal.SIGTERM
    assert len(calls.read_text().splitlines()) == 3
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # submitit's controller starts the job again on this status
    assert _requeue(signal.SIGUSR2) == LOCAL_REQUEUE_RETURN_CODE
    assert _requeue(signal.SIGUSR2, progressed=True) == LOCAL_REQUEUE_RETURN_CODE
    assert _requeue(signal.SIGUSR2, progressed=False) == 128 + signal.SIGUSR2
    assert _requeue(signal.SIGTERM) == 128 + signal.SIGTERM  # someone stopping a local job: it stays stopped


@pytest.mark.parametrize(("epoch", "progressed"), [(0, False), (1, True)])
def test_a_fit_stopped_at_its_time_limit_says_whether_it_saved_a_checkpoint_first(
    make_config, tmp_path, epoch, progressed
):
    from transfuse.errors import Preempted
    from transfuse.train import train

    stop = [
        f"+callbacks.stop.{k}={v}"
        for k, v in {"marker": tmp_path / "sent", "epoch": epoch, "signal": "SIGUSR2"}.items()
    ]
    cfg = make_config(*TINY, "trainer.max_epochs=2", "+callbacks.stop._target_=tests.helpers.SignalOnce", *stop)
    before = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(Preempted) as stopped:
        train(cfg)
    assert stopped.value.signum == signal.SIGUSR2 and stopped.value.progressed is progressed
    assert signal.getsignal(signal.SIGUSR2) == before  # the process has its own handler back
    (run,) = MlflowClient(cfg.logger.tracking_uri).search_runs(["0", "1"])
    assert run.info.status == "KILLED" and run.data.tags["preempted"] == "true"


@pytest.mark.slow
def test_a_submitit_sweep_runs_each_job_in_its_own_process_and_a_relaunch_skips_them(tmp_path, sweep):
    first = sweep("seed=0,1", *TINY)
    first.wait()
    runs = first.runs()
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    pids = {r.data.tags["pid"] for r in runs}
    assert len(pids) == 2 and str(first.process.pid) not in pids  # each job its own process
    (folder,) = (tmp_path / "multirun").glob("*/*")  # the jobs write under the launcher's sweep folder
    assert {(tmp_path / r.data.tags["sweep_id"]).resolve() for r in runs} == {folder.resolve()}
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["0", "1"]

    second = sweep("seed=0,1", *TINY)
    second.wait()
    again = second.runs()
    assert {r.info.run_id for r in again} == {r.info.run_id for r in runs}  # both skipped: no new run
    assert all(len(r.data.tags["sweeps"].split()) == 2 for r in again)  # the relaunch is recorded on each


@pytest.mark.slow
def test_a_job_signalled_before_its_time_limit_is_requeued_and_resumes_into_its_own_run(tmp_path, sweep):
    marker = tmp_path / "second-epoch"
    slow = ["+callbacks.slow._target_=tests.helpers.SlowSteps", f"+callbacks.slow.marker={marker}"]
    job = sweep("seed=0", *TINY, "trainer.max_epochs=3", "data.batch_size=12", *slow, "+callbacks.slow.epoch=1")
    _wait_for(lambda: marker.exists() or job.process.poll() is not None, "the second epoch")
    assert job.process.poll() is None, job.process.communicate()[1][-3000:]
    (run,) = job.runs()
    client, run_id, pid = MlflowClient(job.uri), run.info.run_id, run.data.tags["pid"]
    os.kill(int(pid), signal.SIGUSR2)  # what Slurm sends signal_delay_s before the time limit (submitit's --signal)

    # the job stops after its batch and ends the run KILLED with its last full checkpoint...
    killed = _wait_for(lambda: (r := client.get_run(run_id)).info.status == "KILLED" and r, "the run to stop")
    assert killed.data.tags["preempted"] == "true"
    assert "checkpoints/resume.ckpt" in {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    # ... then exits with submitit's requeue status: its controller starts it again and it resumes the run
    job.wait()
    (resumed,) = job.runs()
    assert resumed.info.run_id == run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed"] == "1" and resumed.data.tags["pid"] != pid
    assert len(client.get_metric_history(run_id, "val/acc")) == 3
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_step")]
    assert len(steps) == len(set(steps)) == 15  # 3 epochs of 5 steps: one point per step
    (log,) = (tmp_path / "multirun").glob("*/*/.submitit/*/*_0_log.err")
    assert "transfuse-train: preempted (stopped by SIGUSR2)" in log.read_text()
