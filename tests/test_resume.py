"""A killed or preempted job resumes into its own run: same run id, one point per step, the same weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import FAST, run_cli

ROOT = Path(__file__).resolve().parents[1]
#: six epochs of eight steps: long enough to kill during the third
SIX = [*FAST, "trainer.max_epochs=6", "data.batch_size=12", "last_checkpoint=weights", "test_last=false"]


def _launch(tmp_path: Path, *extra: str):
    args = [*SIX, f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *extra]
    return run_cli("transfuse.train", args, tmp_path, env={"PYTHONPATH": str(ROOT)})  # it imports tests.helpers


def _runs(tmp_path: Path, experiment: str = "transfuse"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _last_weights(client: MlflowClient, run_id: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    path = client.download_artifacts(run_id, "checkpoints/last.ckpt", str(tmp_path / run_id))
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    "signal, status", [("SIGKILL", "RUNNING"), pytest.param("SIGTERM", "KILLED", marks=pytest.mark.slow)]
)
def test_a_killed_fit_resumes_into_its_own_run_bit_for_bit(tmp_path, signal, status):
    killer = [
        "+callbacks.stop._target_=tests.helpers.SignalOnce",
        f"+callbacks.stop.marker={tmp_path / 'stopped'}",
        "+callbacks.stop.epoch=2",
        f"+callbacks.stop.signal={signal}",
    ]
    first = _launch(tmp_path, *killer)
    assert first.returncode != 0 and (tmp_path / "stopped").exists()
    client, (killed,) = _runs(tmp_path)
    assert killed.info.status == status
    if signal == "SIGTERM":
        assert killed.data.tags["preempted"] == "true" and first.returncode == 143
        assert "preempted" in first.stderr.splitlines()[-1]
    assert client.get_metric_history(killed.info.run_id, "train/loss_step")  # the killed fit logged points
    assert "checkpoints/resume.ckpt" in {a.path for a in client.list_artifacts(killed.info.run_id, "checkpoints")}

    second = _launch(tmp_path, *killer)  # the same command
    assert second.returncode == 0, second.stderr[-2000:]
    _, (resumed,) = _runs(tmp_path)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed"] == "1"
    # a fit that ended well keeps no resumable checkpoint
    assert "checkpoints/resume.ckpt" not in {a.path for a in client.list_artifacts(resumed.info.run_id, "checkpoints")}
    assert len(client.get_metric_history(resumed.info.run_id, "val/acc")) == 6

    uninterrupted = _launch(tmp_path, "logger.experiment_name=clean")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    _, (clean,) = _runs(tmp_path, "clean")
    # every metric has the points an uninterrupted run logs: no step twice, none missing
    assert set(resumed.data.metrics) == set(clean.data.metrics)
    for key in clean.data.metrics:
        if key.startswith("time/"):
            continue
        steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, key))
        assert steps == sorted(m.step for m in client.get_metric_history(clean.info.run_id, key)), key
    a, b = _last_weights(client, resumed.info.run_id, tmp_path), _last_weights(client, clean.info.run_id, tmp_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.data.metrics["test/acc"] == clean.data.metrics["test/acc"]


def test_stale_runs_are_listed_and_marked_killed_only_when_asked(tracking_uri, tmp_path, capsys):
    import socket
    import subprocess as sp
    import time

    from transfuse.runs_cli import main

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("jobs", (tmp_path / "a").as_uri())
    dead = sp.Popen(["true"])
    dead.wait()  # a process id that no longer runs
    here = {"host": socket.gethostname(), "pid": str(dead.pid), "heartbeat": str(int(time.time()))}
    gone = client.create_run(experiment, run_name="gone", tags=here).info.run_id
    alive = client.create_run(experiment, run_name="alive", tags={**here, "pid": str(os.getpid())}).info.run_id
    far = {"host": "elsewhere", "pid": "1", "heartbeat": str(int(time.time()) - 3600)}
    silent = client.create_run(experiment, run_name="silent", tags=far).info.run_id
    main(["stale", "--tracking-uri", tracking_uri])
    out = capsys.readouterr().out
    assert gone in out and silent in out and alive not in out
    assert {client.get_run(r).info.status for r in (gone, alive, silent)} == {"RUNNING"}  # a dry run
    main(["stale", "--tracking-uri", tracking_uri, "--mark-killed"])
    assert client.get_run(gone).info.status == "KILLED" and client.get_run(silent).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"
