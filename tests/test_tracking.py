"""The run lifecycle and the metric logger, read back from a real MLflow store."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from transfuse.tracking.run import tracked_run


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_logger_batches_metrics_until_flushed_then_keeps_steps_and_values(tracking_uri):
    with tracked_run(tracking_uri, "logging", "buffered") as run:
        logger = run.logger(flush_every_s=3600.0, synchronous=True)
        for step in range(5):
            logger.log_metrics({"train/loss": 1.0 / (step + 1), "weird name!": float(step)}, step=step)
        assert _history(run.client, run.run_id, "train/loss") == []  # held back: no commit per call
        logger.finalize("success")
        assert _history(run.client, run.run_id, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
        assert _history(run.client, run.run_id, "weird name") == [(s, float(s)) for s in range(5)]
        logger.log_metrics({"test/acc": 0.5}, step=7)
        logger.finalize("failed")  # Lightning finalises on failure too: nothing is lost
        assert _history(run.client, run.run_id, "test/acc") == [(7, 0.5)]


def test_logger_writes_at_once_when_the_interval_is_zero(tracking_uri):
    with tracked_run(tracking_uri, "logging", "immediate") as run:
        logger = run.logger(flush_every_s=0.0, synchronous=True)
        logger.log_metrics({"val/acc": 0.25}, step=3)
        run.sender.drain()  # written from the background thread, without waiting for a flush interval
        assert _history(run.client, run.run_id, "val/acc") == [(3, 0.25)]


def test_a_crash_inside_the_run_ends_it_failed_with_the_error(tracking_uri):
    with pytest.raises(RuntimeError), tracked_run(tracking_uri, "logging", "crash") as run:
        raise RuntimeError("boom")
    finished = MlflowClient(tracking_uri).get_run(run.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags["error"] == "RuntimeError: boom"


def test_a_run_writes_nothing_into_the_working_directory(tracking_uri, tmp_path, monkeypatch):
    # MLflow's default store is ./mlflow.db: a job that touched it would create a second store wherever it was
    # launched, unlocked, from every job of a parallel sweep at once (it once broke a schema migration that way)
    from mlflow.tracking._tracking_service import utils

    elsewhere = tmp_path / "launched_here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # the process's default store, new to this process (MLflow caches one store object per URI)
    monkeypatch.setattr(utils, "_tracking_uri", f"sqlite:///{elsewhere}/default.db")
    with tracked_run(tracking_uri, "logging", "tidy") as run:  # no Lightning logger: it would point MLflow's
        run.client.log_metric(run.run_id, "val/acc", 0.5)  # default at the run's store as it starts
    assert list(elsewhere.iterdir()) == []
    assert MlflowClient(tracking_uri).get_run(run.run_id).info.status == "FINISHED"


def test_points_queued_by_an_asynchronous_logger_land_before_the_run_finishes(tracking_uri):
    with tracked_run(tracking_uri, "logging", "queued") as run:
        logger = run.logger(flush_every_s=0.0, synchronous=False)
        for step in range(50):
            logger.log_metrics({"train/loss": float(step)}, step=step)
    assert _history(MlflowClient(tracking_uri), run.run_id, "train/loss") == [(s, float(s)) for s in range(50)]
