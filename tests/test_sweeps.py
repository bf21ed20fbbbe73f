"""Resumable sweeps: config hashing, skipping finished jobs, and parallel jobs sharing one SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.conftest import FAST, compose_config
from transfuse.report import fetch_runs
from transfuse.sweeps import HASH_TAG, RECIPE_TAG, SWEEPS_TAG, config_hash, recipe_hash, run_or_reuse
from transfuse.train import train

TINY = [*FAST, "trainer.max_epochs=1", "last_checkpoint=none", "logger.plots=false", "logger.experiment_name=sweep"]


def _runs(uri: str, experiment: str = "sweep") -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_hash_ignores_where_outputs_go_but_not_what_decides_the_result(tmp_path):
    here = config_hash(compose_config(["optimizer.lr=0.01"], tmp_path / "a"))
    elsewhere = compose_config(["optimizer.lr=0.01", "trainer.enable_progress_bar=false"], tmp_path / "b")
    assert config_hash(elsewhere) == here  # other store, other output folder, progress bar off
    assert config_hash(compose_config(["optimizer.lr=0.02"], tmp_path / "a")) != here
    assert config_hash(compose_config(["optimizer.lr=0.01", "seed=1"], tmp_path / "a")) != here
    assert config_hash(compose_config(["optimizer.lr=0.01", "+tags.study=x"], tmp_path / "a")) != here


def test_recipe_hash_is_the_config_hash_without_the_seed(tmp_path):
    def hashes(*overrides: str) -> tuple[str, str]:
        cfg = compose_config(["experiment=digits_transfer/finetune", *overrides], tmp_path / "a")
        digest, recipe = config_hash(cfg), recipe_hash(cfg)
        assert config_hash(cfg) == digest and cfg.seed == int(overrides[0].removeprefix("seed="))  # cfg unchanged
        return digest, recipe

    seed_0, seed_1 = hashes("seed=0"), hashes("seed=1")
    assert seed_0[0] != seed_1[0]  # a sweep over seeds still runs every seed
    # the same recipe, though tags.seed, data.subset_seed, the run name and source_query (params.seed = '${seed}')
    # interpolate the seed
    assert seed_0[1] == seed_1[1]
    assert hashes("seed=0", "trainer.max_epochs=6")[1] != seed_0[1]
    assert hashes("seed=1", "finetune=linear_probe")[1] != seed_1[1]


def test_every_run_is_tagged_with_its_config_and_recipe_hashes(make_config, tracking_uri):
    cfg = make_config(*TINY)
    train(cfg)
    (run,) = _runs(tracking_uri)
    assert run.data.tags[HASH_TAG] == config_hash(cfg)
    assert run.data.tags[RECIPE_TAG] == recipe_hash(cfg)


def test_a_relaunched_sweep_skips_finished_jobs_and_reruns_failed_ones(make_config, tracking_uri):
    configs = [make_config(*TINY, f"seed={seed}") for seed in (0, 1)]
    first = [run_or_reuse(cfg, train, sweep_id="sweep-1") for cfg in configs]
    assert len(_runs(tracking_uri)) == 2

    again = [run_or_reuse(cfg, train, sweep_id="sweep-2") for cfg in configs]
    runs = _runs(tracking_uri)
    assert len(runs) == 2  # nothing ran again
    assert [a["test/acc"] for a in again] == [f["test/acc"] for f in first]  # the finished runs' metrics
    assert all(r.data.tags[SWEEPS_TAG].split()[-1] == "sweep-2" for r in runs)  # a report by sweep finds them

    failed = next(r for r in runs if r.data.params["seed"] == "1")
    MlflowClient(tracking_uri).set_terminated(failed.info.run_id, "FAILED")
    for cfg in configs:
        run_or_reuse(cfg, train, sweep_id="sweep-3")
    runs = _runs(tracking_uri)
    assert len(runs) == 3  # only the failed job ran again
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]

    configs[0].resume = False
    run_or_reuse(configs[0], train, sweep_id="sweep-4")
    assert len(_runs(tracking_uri)) == 4  # resume=false reruns a finished job
    run_or_reuse(configs[1], train)  # a single run (no sweep) always runs
    assert len(_runs(tracking_uri)) == 5


WRITER = """
import sys
from transfuse.tracking.run import tracked_run
with tracked_run(sys.argv[1], "parallel", f"job-{sys.argv[2]}") as run:
    for step in range(100):
        run.client.log_metric(run.run_id, "loss", 1.0 / (step + 1), step=step)
"""


@pytest.mark.slow  # six jobs racing on one new SQLite file: about 15 s
def test_parallel_jobs_into_a_new_sqlite_store_all_finish(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh.db"  # not created yet: the jobs race to create schema and experiment
    launched = tmp_path / "launched_here"
    launched.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    jobs = [
        subprocess.Popen([sys.executable, "-c", WRITER, uri, str(i)], stderr=subprocess.PIPE, text=True, cwd=launched,
                         env=env)
        for i in range(6)
    ]  # fmt: skip
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 6, "\n=====\n".join(e[-1500:] for e in errors)
    assert list(launched.iterdir()) == []  # no job made MLflow's default ./mlflow.db (unlocked, all at once)
    runs = _runs(uri, "parallel")
    assert sorted(r.info.run_name for r in runs) == [f"job-{i}" for i in range(6)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    client = MlflowClient(uri)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 100 for r in runs)


@pytest.mark.slow
def test_joblib_sweep_in_parallel_then_relaunched_from_the_command_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [
        sys.executable,
        "-m",
        "transfuse.train",
        "-m",
        *TINY,
        "seed=0,1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",  # a new store, created by parallel jobs
    ]

    def launch(sweep_dir: str) -> None:
        result = subprocess.run(
            [*command, f"hydra.sweep.dir={tmp_path / sweep_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]

    launch("first")
    runs = _runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["sweep_id"] for r in runs} == {str(tmp_path / "first")}

    launch("second")
    runs = _runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 3  # every job was skipped
    assert {r.data.tags[SWEEPS_TAG] for r in runs} == {f"{tmp_path / 'first'} {tmp_path / 'second'}"}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(fetch_runs(client, [], sweeps=[str(tmp_path / "second")])) == 3  # a report of the relaunch
    assert fetch_runs(client, [], sweeps=[str(tmp_path / "sec")]) == []  # a prefix of an id is not the id


@pytest.mark.slow
def test_optuna_search_runs_its_trials_and_a_relaunch_replays_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [
        *[sys.executable, "-m", "transfuse.train", "-m", *TINY, "hparams_search=lr_wd"],
        *["hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2"],
    ]
    for _ in range(2):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 3  # the seeded sampler proposed the same trials again, and each was reused
    assert len({r.data.params["optimizer.lr"] for r in runs}) == 3
    assert all(len(r.data.tags[SWEEPS_TAG].split()) == 2 for r in runs)
