"""transfuse through a real tracking server backed by PostgreSQL, with proxied artifacts: a parallel sweep, a
fine-tune from one of its runs by ``runs:/``, a fusion of two of them and a report, all read back from the server.

PostgreSQL comes from the ``pgserver`` wheel of the ``dev`` extras (see ``scripts/_servers.py``); without it the
test is skipped with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from mlflow import MlflowClient
from scripts._servers import Unavailable, mlflow_server, postgres

from tests.conftest import FAST, run_cli
from transfuse.weights.sources import read_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
EXPERIMENT = "postgres"


class InitialState(Callback):
    """Saves the weights a fit starts from to ``path`` (injected with ``+callbacks.initial._target_=...``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer, pl_module) -> None:
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, float]]:
    """A PostgreSQL-backed ``mlflow server`` on 127.0.0.1, the folder of its artifacts and when it began to
    start (``time.monotonic()``); both are stopped and the database removed after the test."""
    start = time.monotonic()
    with ExitStack() as stack:
        try:
            database = stack.enter_context(postgres(tmp_path / "pgdata"))
        except Unavailable as err:
            pytest.skip(f"no PostgreSQL to back the tracking server: {err}")
        uri = stack.enter_context(mlflow_server(database, tmp_path / "artifacts"))
        yield uri, tmp_path / "artifacts", start
    assert not (tmp_path / "pgdata").exists()


def test_sweep_finetune_fusion_and_report_through_a_postgres_backed_server(tmp_path, server):
    uri, artifacts, start = server
    up = time.monotonic() - start
    tiny = [*FAST, "trainer.max_epochs=1", "last_checkpoint=none", "test_last=false", "logger.plots=false"]
    common = [*tiny, f"logger.tracking_uri={uri}", f"logger.experiment_name={EXPERIMENT}"]
    sweep = run_cli(
        "transfuse.train",
        ["-m", *common, "seed=0,1,2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    members = {r.data.params["seed"]: r for r in client.search_runs([experiment_id])}
    assert sorted(members) == ["0", "1", "2", "3"]
    source = members["0"]

    initial = tmp_path / "initial.pt"
    callback = ["+callbacks.initial._target_=tests.test_postgres.InitialState", f"+callbacks.initial.path={initial}"]
    finetune = run_cli(
        "transfuse.train",
        [*common, "stage=finetune", f"init.weights=runs:/{source.info.run_id}", "seed=4", *callback],
        tmp_path,
        {"PYTHONPATH": str(ROOT)},
    )
    assert finetune.returncode == 0, finetune.stderr[-3000:]

    pool = f"pool.runs=[{members['1'].info.run_id},{members['2'].info.run_id}]"
    fusion = run_cli(
        "transfuse.fuse",
        ["data=synthetic", "data.per_class=24", "fusion_method=logit_mean", pool, *common[-2:], "logger.plots=false"],
        tmp_path,
    )
    assert fusion.returncode == 0, fusion.stderr[-3000:]

    report = run_cli(
        "transfuse.report.cli", ["--experiment", EXPERIMENT, "--tracking-uri", uri, "--rows", "tags.stage"], tmp_path
    )
    assert report.returncode == 0, report.stderr[-3000:]

    runs = client.search_runs([experiment_id])
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # proxied through the server
    stages = {r.data.tags["stage"]: r for r in runs}
    assert sorted(r.data.tags["stage"] for r in runs) == ["finetune", "fuse", *["pretrain"] * 4]
    tuned = stages["finetune"]
    assert tuned.data.tags["source_run_id"] == source.info.run_id

    # the source's checkpoint, downloaded from the server, is exactly what the fine-tune started from
    downloaded = client.download_artifacts(source.info.run_id, "checkpoints/best.ckpt", str(tmp_path / "down"))
    state, class_names = read_file(downloaded)
    started = torch.load(initial, weights_only=True)
    assert state.keys() == started.keys()
    assert all(torch.equal(state[k], started[k]) for k in state)
    assert class_names  # a transfuse checkpoint keeps its classes
    stored = artifacts / experiment_id / source.info.run_id / "artifacts" / "checkpoints" / "best.ckpt"
    assert stored.read_bytes() == Path(downloaded).read_bytes()  # the file the server keeps
    tuned_state, _ = read_file(client.download_artifacts(tuned.info.run_id, "checkpoints/best.ckpt", str(tmp_path)))
    assert tuned_state.keys() == state.keys()

    rows = [line.strip("|").split("|") for line in report.stdout.splitlines() if line.startswith("|")][2:]
    assert {cells[0].strip(): cells[-1].strip() for cells in rows} == {"pretrain": "4", "finetune": "1", "fuse": "1"}
    total = time.monotonic() - start
    print(f"PostgreSQL and mlflow server up in {up:.0f} s; with the sweep, fine-tune, fusion and report {total:.0f} s")
