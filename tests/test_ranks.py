"""Which process of a job speaks for it, and how a resumed DDP job's checkpoint reaches every process."""

from __future__ import annotations

import pytest

from transfuse.ranks import RANK_VARIABLES, RESUME_CHECKPOINT_ENV, global_rank, shared_checkpoint
from transfuse.tracking.run import PassiveRun, tracked_run


@pytest.fixture
def alone(monkeypatch):
    for name in (*RANK_VARIABLES, "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", RESUME_CHECKPOINT_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_rank_is_read_as_lightning_reads_it(alone):
    assert global_rank() == 0
    alone.setenv("SLURM_PROCID", "3")
    assert global_rank() == 3
    alone.setenv("LOCAL_RANK", "1")  # Lightning's launcher sets it for the processes it starts: it comes first
    assert global_rank() == 1


def test_rank_zero_hands_its_checkpoint_to_the_processes_it_starts(alone):
    assert shared_checkpoint("/out/checkpoints/resumed/resume.ckpt") == "/out/checkpoints/resumed/resume.ckpt"
    alone.setenv("LOCAL_RANK", "1")  # a process started by rank 0 inherits rank 0's environment
    assert shared_checkpoint(None) == "/out/checkpoints/resumed/resume.ckpt"


def test_processes_the_cluster_started_all_start_the_fit_over(alone):
    alone.setenv("SLURM_NTASKS", "4")
    assert shared_checkpoint("/out/resume.ckpt") is None  # rank 0 could not tell the others: nobody resumes
    alone.setenv("SLURM_PROCID", "2")
    assert shared_checkpoint(None) is None


def test_another_rank_opens_no_run_and_writes_nothing(alone, tracking_uri):
    from mlflow import MlflowClient

    alone.setenv("LOCAL_RANK", "1")
    with tracked_run(tracking_uri, "ddp", "rank-1", {"stage": "pretrain"}) as run:
        assert isinstance(run, PassiveRun) and not run.is_writer
        run.log_metrics({"test/acc": 0.5})
        run.log_source("runs:/abc", "abc")
    client = MlflowClient(tracking_uri)
    assert client.get_experiment_by_name("ddp") is None  # not even the experiment
    assert run.logged_scores == {"test/acc": 0.5}  # what the entry point returns, locally
