"""The command line as a user types it: one-line errors, --cfg job, multirun into the default store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import FAST, last_line, run_cli


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("transfuse.train", args, cwd)


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = _run([*FAST, "stage=finetune"], tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("transfuse-train: error: stage=finetune needs init.weights")


def test_typo_in_a_key_names_the_key(tmp_path):
    result = _run(["trainer.max_epoch=3"], tmp_path)
    assert result.returncode != 0
    assert "max_epoch" in result.stderr


def test_cfg_job_prints_the_resolved_choice(tmp_path):
    result = _run(["--cfg", "job", "--resolve", "backbone.name=test_vit", "data=digits"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: test_vit" in result.stdout
    assert "_target_: transfuse.data.UCIDigits" in result.stdout
    assert "backbone: test_vit" in result.stdout  # tags resolved
    assert "- 0.5" in result.stdout  # test_vit's normalisation, read from timm


def test_multirun_writes_one_finished_run_per_job_into_the_default_store(tmp_path, _empty_store):
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")  # the default store is ./mlflow.db
    result = _run(["-m", *FAST, "seed=0,1", "trainer.max_epochs=1", "logger.experiment_name=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert sorted(r.data.tags["sweep_job"] for r in runs) == ["0", "1"]
    assert all("seed=" in r.data.tags["overrides"] for r in runs)
    assert (tmp_path / "multirun").is_dir()


def test_unknown_backbone_is_one_line_on_train_and_creates_no_run(tmp_path):
    result = _run([*FAST, "backbone.name=resnet_does_not_exist"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        lines[-1] == "transfuse-train: error: timm has no model named 'resnet_does_not_exist' (see timm.list_models())"
    )
    assert (
        not (tmp_path / "mlflow.db").exists()
        or MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("transfuse") is None
    )


@pytest.mark.slow  # a fuse subprocess: about 10 s; the train command's one-line error stays in the quick suite
def test_unknown_student_backbone_is_one_line_on_fuse(tmp_path):
    args = ["data=synthetic", "fusion_method=distill", "backbone.name=resnet_does_not_exist", "pool.runs=[abc123]"]
    result = run_cli("transfuse.fuse", args, tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    expected = "transfuse-fuse: error: timm has no model named 'resnet_does_not_exist' (see timm.list_models())"
    assert last_line(result.stderr) == expected


def test_help_lists_only_the_groups_each_entry_point_takes(tmp_path):
    train = run_cli("transfuse.train", ["--help"], tmp_path)
    fuse = run_cli("transfuse.fuse", ["--help"], tmp_path)
    assert train.returncode == 0 and fuse.returncode == 0

    def groups(text: str) -> dict[str, list[str]]:
        rows = [line.strip().split(": ", 1) for line in text.splitlines() if line.startswith("  ") and ": " in line]
        return {name: options.split(", ") for name, options in rows}

    train_groups, fuse_groups = groups(train.stdout), groups(fuse.stdout)
    assert {"stage", "finetune", "multi_input", "adapt", "data", "experiment"} <= set(train_groups)
    assert "fusion_method" not in train_groups and "digits_soups/fuse" not in train_groups["experiment"]
    assert {"fusion_method", "data", "backbone", "experiment"} <= set(fuse_groups)
    assert not {"stage", "adapt", "multi_input", "hparams_search"} & set(fuse_groups)
    assert fuse_groups["experiment"] == [
        "digits_soups/fuse",
        "multitask_merging/merge",
        "wortsman2022_soups/full_scale_fuse",
    ]
    assert "_base" not in train_groups["data"] and "mnist5k" in train_groups["data"]


def test_runs_started_in_the_same_second_get_their_own_output_folder(tmp_path):
    command = [sys.executable, "-m", "transfuse.train", "--cfg", "hydra", "--resolve"]
    launched = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    folders = set()
    for process in launched:
        out, _ = process.communicate(timeout=120)
        lines = out.splitlines()
        folders.add(next(lines[i + 1] for i, line in enumerate(lines) if line.strip() == "run:"))
    assert len(folders) == 4, folders


def test_a_plain_typo_is_one_line_with_the_nearest_key(tmp_path):
    result = _run(["optimzer.lr=0.1"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "transfuse-train: error: optimzer.lr is not a key of the config; did you mean optimizer.lr? "
        "(a new key needs +optimzer.lr=...)"
    ]


def test_an_unknown_option_is_one_line_listing_the_options(tmp_path):
    result = _run(["finetune=lpft"], tmp_path)
    assert result.returncode != 0
    line = last_line(result.stderr)
    assert line.startswith("transfuse-train: error: finetune=lpft is not an option; options: full, ")
    assert "lp_ft" in line and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a four-job multirun in a subprocess: about 20 s
def test_a_failing_multirun_prints_one_line_per_failed_job_runs_them_all_and_exits_1(tmp_path, _empty_store):
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    query = "init.weights=\"tags.stage = 'pretrain' and tags.data = 'nothing'\""
    result = _run(["-m", *FAST, "stage=finetune", query, "seed=0,1,2", "hydra/job_logging=none"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("transfuse-train:")]
    for i, line in enumerate(lines[:3]):
        job = line.split(" failed:")[0]
        assert job.startswith(f"transfuse-train: job {i} (") and job.endswith(f"seed={i})"), job
    assert all("no FINISHED run matches" in line for line in lines[:3])
    assert lines[3].startswith("transfuse-train: 3 job(s) of the sweep failed")
    assert len(lines) == 4
