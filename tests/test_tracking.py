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
