"""transfuse-report against a store filled with known values."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from transfuse.report import fetch_runs, main, summarise


@pytest.fixture
def store(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("study")
    values = {"scratch": [0.5, 0.7, 0.9], "full": [0.8, 0.9], "single": [0.6]}
    for method, accuracies in values.items():
        for seed, accuracy in enumerate(accuracies):
            run = client.create_run(experiment, tags={"method": method, "seed": str(seed)})
            client.log_metric(run.info.run_id, "test/acc", accuracy)
            client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(experiment, tags={"method": "full"})
    client.log_metric(failed.info.run_id, "test/acc", 0.0)
    client.set_terminated(failed.info.run_id, "FAILED")
    return client


def test_groups_aggregate_finished_runs_by_hand(store):
    groups = {g.key: g for g in summarise(fetch_runs(store, ["study"]), ["tags.method"], "test/acc")}
    scratch, full, single = groups[("scratch",)], groups[("full",)], groups[("single",)]
    assert scratch.n == 3 and scratch.mean == pytest.approx(0.7)
    assert scratch.std == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert scratch.sem == pytest.approx(0.2 / math.sqrt(3))
    assert full.n == 2 and full.mean == pytest.approx(0.85)  # the FAILED run's 0.0 is left out
    assert full.std == pytest.approx(math.sqrt(0.005))
    assert single.n == 1 and math.isnan(single.std)


def test_cli_writes_markdown_in_the_requested_order_with_the_best_in_bold(store, tracking_uri, tmp_path, capsys):
    out = tmp_path / "table.md"
    argv = ["--experiment", "study", "--tracking-uri", tracking_uri, "--order", "scratch,full", "--markdown", str(out)]
    main(argv)
    lines = out.read_text().splitlines()
    assert lines[2] == "| scratch | 0.7000 ± 0.2000 | 3 |"
    assert lines[3] == "| full | **0.8500 ± 0.0707** | 2 |"
    assert lines[4] == "| single | 0.6000 | 1 |"
    assert capsys.readouterr().out.strip() == out.read_text().strip()
    main([*argv, "--lower-is-better"])
    assert "| single | **0.6000** | 1 |" in out.read_text()


def test_filter_and_unknown_experiment(store, tracking_uri):
    runs = fetch_runs(store, ["study"], "tags.method = 'full'")
    assert len(runs) == 2
    with pytest.raises(SystemExit, match="no experiment named 'nope'"):
        main(["--experiment", "nope", "--tracking-uri", tracking_uri])


def test_numeric_keys_sort_as_numbers(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("labels")
    for labels in ("50", "5", "10", "1"):
        run = client.create_run(experiment, tags={"labels": labels})
        client.log_metric(run.info.run_id, "test/acc", 0.5)
        client.set_terminated(run.info.run_id, "FINISHED")
    groups = summarise(fetch_runs(client, ["labels"]), ["tags.labels"], "test/acc")
    assert [g.key for g in groups] == [("1",), ("5",), ("10",), ("50",)]


def test_columns_pivot_with_the_best_of_each_column_in_bold(tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("pairs")
    values = {("dann", "a->b"): [0.6, 0.8], ("dann", "b->a"): [0.3, 0.5], ("coral", "a->b"): [0.5, 0.5]}
    for (method, pair), accuracies in values.items():
        for accuracy in accuracies:
            run = client.create_run(experiment, tags={"method": method, "pair": pair})
            client.log_metric(run.info.run_id, "test/acc", accuracy)
            client.set_terminated(run.info.run_id, "FINISHED")
    out = tmp_path / "pivot.md"
    select = ["--experiment", "pairs", "--tracking-uri", tracking_uri, "--rows", "tags.method"]
    main([*select, "--columns", "tags.pair", "--order", "coral,dann", "--error", "sem", "--markdown", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0] == "| tags.method | a->b | b->a |"
    assert lines[2] == "| coral | 0.5000 ± 0.0000 | n/a |"  # no coral run on b->a
    # dann a->b: mean 0.7, std 0.1414, sem = std / sqrt(2) = 0.1; b->a likewise
    assert lines[3] == "| dann | **0.7000 ± 0.1000** | **0.4000 ± 0.1000** |"
    assert "test/acc (mean ± sem), n = 2 runs per cell" in lines[-1]


def test_several_metrics_are_columns_with_their_own_best(store, tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("study").experiment_id
    for run in client.search_runs([experiment], "attributes.status = 'FINISHED'"):
        cost = {"scratch": 10.0, "full": 20.0, "single": 5.0}[run.data.tags["method"]]
        client.log_metric(run.info.run_id, "cost/params", cost)
    out = tmp_path / "cost.md"
    select = ["--experiment", "study", "--tracking-uri", tracking_uri, "--order", "scratch,full"]
    main([*select, "--metric", "test/acc,cost/params", "--lower-is-better", "cost/params", "--markdown", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0] == "| tags.method | test/acc (mean ± std) | cost/params (mean ± std) | n |"
    assert lines[2] == "| scratch | 0.7000 ± 0.2000 | 10.0000 ± 0.0000 | 3 |"
    assert lines[3] == "| full | **0.8500 ± 0.0707** | 20.0000 ± 0.0000 | 2 |"
    assert lines[4] == "| single | 0.6000 | **5.0000** | 1 |"


def test_large_values_print_as_grouped_integers():
    from transfuse.report import _number

    assert _number(11181642.0) == "11,181,642" and _number(0.98444) == "0.9844" and _number(999.5) == "999.5000"
