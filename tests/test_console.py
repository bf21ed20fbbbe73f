"""What a command prints: where its run logs, and a table of what it logged; no library noise."""

from __future__ import annotations

import re

import pytest
from mlflow import MlflowClient

from tests.conftest import FAST, run_cli
from transfuse.console import fusion_table, result_table
from transfuse.tracking.run import ui_lines

#: lines the libraries under transfuse print by themselves, none of which a user can act on
NOISE = (
    "Seed set to",
    "GPU available",
    "TPU available",
    "HPU available",
    "litlogger",
    "LeafSpec",
    "log_every_n_steps",
    "module(s) in eval mode",
    "weights_only",
    "Restoring states",
    "Trainer.fit` stopped",
    "DataLoader 0",
    "Downloading artifacts",
    "Creating initial MLflow database tables",
    "Updating database tables",
)
#: a tiny fit with Lightning's default logging interval, longer than an epoch of two batches
QUICK = [arg for arg in FAST if not arg.startswith("trainer.log_every_n_steps")]


def _printed_run(output: str) -> tuple[str, str]:
    """Name and id of the run a command says it opened."""
    opened = re.search(r"^run (\S+) \(([0-9a-f]{32})\) in experiment transfuse$", output, flags=re.MULTILINE)
    assert opened, output
    return opened.group(1), opened.group(2)


@pytest.mark.slow  # two commands, about 40 s on two cores
def test_a_linear_probe_prints_its_run_and_its_results_and_no_library_noise(tmp_path):
    fresh = tmp_path / "fresh"  # no store yet: MLflow creates and migrates one
    fresh.mkdir()
    source = run_cli("transfuse.train", [*QUICK, "trainer.max_epochs=1"], fresh)
    assert source.returncode == 0, source.stderr[-3000:]
    _, source_id = _printed_run(source.stdout)
    args = [*QUICK, "stage=finetune", "finetune=linear_probe", f"init.weights=runs:/{source_id}"]
    probe = run_cli("transfuse.train", args, fresh)
    assert probe.returncode == 0, probe.stderr[-3000:]

    for result in (source, probe):
        output = result.stdout + result.stderr
        assert not [noise for noise in NOISE if noise in output], output
        assert result.stderr.strip() == ""  # warnings and errors go there: this run had none
    name, run_id = _printed_run(probe.stdout)
    client = MlflowClient(f"sqlite:///{fresh}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.run_name == name and run.data.tags["stage"] == "finetune"
    page = f"#/experiments/{run.info.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    assert f"  mlflow ui --backend-store-uri sqlite:///{fresh.resolve()}/mlflow.db\n" in probe.stdout
    assert f"  http://127.0.0.1:5000/{page}\n" in probe.stdout
    printed = dict(re.findall(r"^  (test/acc|val/acc_best|test_last/acc)\s+(\S+)$", probe.stdout, flags=re.MULTILINE))
    assert set(printed) == {"test/acc", "val/acc_best", "test_last/acc"}, probe.stdout
    assert all(printed[key] == f"{run.data.metrics[key]:.4f}" for key in printed), (printed, run.data.metrics)
    # an epoch has 2 batches, fewer than the default interval of 10: each epoch still logs a step point
    assert len(client.get_metric_history(run_id, "train/loss_step")) == 2


def test_result_table_shows_test_metrics_the_best_val_and_every_transfer_score():
    metrics = {"train/acc": 0.9, "test/acc": 0.8, "test_source/acc": 0.7, "val/acc_best": 0.75}
    metrics |= {"transfer/logme": 0.23636, "transfer/leep": -2.19729, "time/fit_s": 3.0}
    table = result_table("results of run r:", metrics).splitlines()
    assert table[0] == "results of run r:"
    assert [line.split() for line in table[1:]] == [
        ["test/acc", "0.8000"],
        ["test_source/acc", "0.7000"],
        ["val/acc_best", "0.7500"],
        ["transfer/leep", "-2.1973"],
        ["transfer/logme", "0.2364"],
    ]


def test_fusion_table_puts_the_fused_model_beside_each_member():
    metrics = {"test/acc": 0.9, "val/acc": 0.85, "member/0/test/acc": 0.8, "member/0/val/acc": 0.7}
    metrics |= {"member/1/test/acc": 0.6, "member/1/val/acc": 0.75, "members/best_val/test/acc": 0.6}
    metrics |= {"members/mean/test/acc": 0.7}
    rows = [line.split() for line in fusion_table("results:", metrics, ["a", "b"]).splitlines()[1:]]
    assert rows == [
        ["test/acc", "val/acc"],
        ["fused", "0.9000", "0.8500"],
        ["member", "0", "a", "0.8000", "0.7000"],
        ["member", "1", "b", "0.6000", "0.7500"],
        ["best", "member", "by", "val", "0.6000"],
        ["member", "mean", "0.7000"],
    ]


def test_ui_lines_name_the_store_from_any_folder_and_hide_passwords(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = "#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_lines("sqlite:///mlflow.db", "3", "abc") == [
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db",
        f"http://127.0.0.1:5000/{page}",
    ]
    assert ui_lines("https://user:secret@mlflow.example.org/", "3", "abc") == [
        f"https://user:***@mlflow.example.org/{page}"
    ]
    command = ui_lines("postgresql://mlflow:secret@db:5432/mlflow", "3", "abc")[0]
    assert command == "mlflow ui --backend-store-uri 'postgresql://mlflow:***@db:5432/mlflow'"


def test_fusion_table_of_a_multi_task_merge_shows_each_task_and_no_member_pick():
    metrics = {"test/acc": 0.7, "val/acc": 0.65, "test/digits/acc": 0.8, "val/digits/acc": 0.75}
    metrics |= {"test/mnist_m/acc": 0.6, "val/mnist_m/acc": 0.55, "test/digits/f1": 0.79, "test/normalized_acc": 0.8}
    metrics |= {"member/0/test/acc": 0.99, "member/1/test/acc": 0.9, "members/mean/test/acc": 0.945}
    rows = [line.split() for line in fusion_table("results:", metrics, ["d", "m"]).splitlines()[1:]]
    assert rows == [
        ["test/acc", "val/acc"],
        ["fused", "0.7000", "0.6500"],
        ["on", "digits", "0.8000", "0.7500"],
        ["on", "mnist_m", "0.6000", "0.5500"],
        ["member", "0", "d", "0.9900", "-"],
        ["member", "1", "m", "0.9000", "-"],
        ["member", "mean", "0.9450"],
    ]
