"""Finding things: ``transfuse-runs experiments`` and ``list`` against a store filled with known runs, and the
"not found" errors that say what exists."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.conftest import run_cli
from transfuse.errors import WeightsError
from transfuse.report.cli import main as report
from transfuse.runs_cli import main

#: start times of the runs (ms since the epoch), so that "newest first" has one answer
START = 1_780_000_000_000


@pytest.fixture
def store(tracking_uri) -> dict[str, str]:
    """Two experiments: a pretraining, a fine-tuning from it and a failed one; an adaptation still running."""
    client = MlflowClient(tracking_uri)
    transfer, adaptation = client.create_experiment("digits_transfer"), client.create_experiment("digits_adaptation")
    runs = {
        "pretrain": (transfer, {"stage": "pretrain", "data": "mnist5k", "method": "source_pretrain"}, "FINISHED", 0.99),
        "finetune": (transfer, {"stage": "finetune", "data": "digits", "finetune": "full"}, "FINISHED", 0.9),
        "failed": (transfer, {"stage": "finetune", "data": "digits", "finetune": "linear_probe"}, "FAILED", None),
        "adapt": (adaptation, {"stage": "adapt", "data": "mnist5k", "target_data": "usps", "adapt": "dann"}, "", None),
    }
    ids = {}
    for i, (name, (experiment, tags, status, accuracy)) in enumerate(runs.items()):
        run_id = client.create_run(experiment, start_time=START + i * 1000, tags=tags, run_name=name).info.run_id
        if accuracy is not None:
            client.log_metric(run_id, "test/acc", accuracy)
        if status:
            client.set_terminated(run_id, status)
        ids[name] = run_id
    client.set_tag(ids["finetune"], "source_run_id", ids["pretrain"])
    return ids


def test_experiments_counts_runs_per_status(store, tracking_uri, capsys):
    main(["experiments", "--tracking-uri", tracking_uri])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["experiment", "runs", "FINISHED", "RUNNING", "FAILED", "newest", "run"]
    assert lines[1] == ["Default", "0", "0", "0", "0", "-"]
    assert lines[2][:5] == ["digits_adaptation", "1", "0", "1", "0"]
    assert lines[3][:5] == ["digits_transfer", "3", "2", "0", "1"]
    report(["--list", "--tracking-uri", tracking_uri])  # the report names the experiments the same way
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == lines


def test_list_shows_runs_newest_first_with_what_they_did(store, tracking_uri, capsys):
    main(["list", "--experiment", "digits_transfer", "--tracking-uri", tracking_uri])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "name", "stage", "data", "method", "status", "test/acc", "source", "run"]
    assert [line.split() for line in lines[1:]] == [
        [store["failed"][:8], "failed", "finetune", "digits", "linear_probe", "FAILED", "-", "-"],
        [store["finetune"][:8], "finetune", "finetune", "digits", "full", "FINISHED", "0.9000", store["pretrain"][:8]],
        [store["pretrain"][:8], "pretrain", "pretrain", "mnist5k", "source_pretrain", "FINISHED", "0.9900", "-"],
    ]
    main(["list", "--tracking-uri", tracking_uri, "--limit", "1"])  # every experiment: their names are shown
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["run", "experiment"]
    adapt = [store["adapt"][:8], "digits_adaptation", "adapt", "adapt", "mnist5k->usps", "dann", "RUNNING"]
    assert lines[1].split()[:7] == adapt  # the target data, and the adaptation method as the method
    assert len(lines) == 2
    main(["list", "--tracking-uri", tracking_uri, "--status", "failed", "--ids"])
    assert capsys.readouterr().out == f"{store['failed']}\n"


def test_list_ids_is_the_full_id_alone_for_a_shell_variable(store, tmp_path):
    query = "tags.stage = 'pretrain'"
    args = ["list", "--experiment", "digits_transfer", "--filter", query, "--limit", "1", "--ids"]
    done = run_cli("transfuse.runs_cli", args, tmp_path)  # the default store, sqlite:///mlflow.db in tmp_path
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{store['pretrain']}\n"
    nothing = run_cli("transfuse.runs_cli", [*args[:3], "--filter", "tags.stage = 'nope'", "--ids"], tmp_path)
    assert nothing.returncode == 1 and nothing.stdout == ""  # `set -e` stops rather than go on with RUN=""
    assert nothing.stderr.strip() == "transfuse-runs: error: no run in 'digits_transfer' matches that --filter"


def test_unknown_experiment_lists_the_experiments_that_exist(store, tracking_uri):
    known = f"in {tracking_uri} (experiments: Default, digits_adaptation, digits_transfer)"
    with pytest.raises(SystemExit) as caught:
        main(["list", "--experiment", "digits_adapt", "--tracking-uri", tracking_uri])
    assert str(caught.value) == f"transfuse-runs: error: no experiment named 'digits_adapt' {known}"
    with pytest.raises(SystemExit) as caught:
        report(["--experiment", "digits_adapt", "--tracking-uri", tracking_uri])
    assert str(caught.value) == f"transfuse-report: error: no experiment named 'digits_adapt' {known}"


def test_bad_filter_and_missing_store_are_one_line(store, tracking_uri, tmp_path):
    with pytest.raises(SystemExit, match=r"^transfuse-runs: error: invalid filter 'tags.stage = pretrain': "):
        main(["list", "--filter", "tags.stage = pretrain", "--tracking-uri", tracking_uri])
    missing = f"sqlite:///{tmp_path}/nope.db"
    with pytest.raises(SystemExit, match=r"^transfuse-runs: error: no MLflow store at .*nope\.db"):
        main(["experiments", "--tracking-uri", missing])
    assert not (tmp_path / "nope.db").exists()


def test_a_run_id_not_in_the_store_names_the_newest_runs(store, tracking_uri):
    from transfuse.weights.sources import resolve

    with pytest.raises(WeightsError) as caught:
        resolve("runs:/0123456789abcdef", MlflowClient(tracking_uri), backbone=None)  # no backbone for runs:/
    newest = ", ".join(f"{store[name]} ({name})" for name in ("adapt", "failed", "finetune"))
    assert str(caught.value) == (
        f"no MLflow run with id '0123456789abcdef' in {tracking_uri}; newest runs: {newest}; "
        "`transfuse-runs list` shows more"
    )
