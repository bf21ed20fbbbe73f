"""transfuse-report against a store filled with known values."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import png_size
from transfuse.errors import ReportError
from transfuse.report import build_table, curve_axis, fetch_runs, summarise
from transfuse.report.cli import main


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
    with pytest.raises(SystemExit, match=r"^transfuse-report: error: no experiment named 'nope' .*\(experiments: "):
        main(["--experiment", "nope", "--tracking-uri", tracking_uri])
    base = ["--experiment", "study", "--tracking-uri", tracking_uri, "--metric", "test/acc"]
    with pytest.raises(SystemExit, match=r"^transfuse-report: error: .*quoted string"):  # MLflow's parser, one line
        main([*base, "--rows", "tags.method", "--filter", "tags.method IN ('full')"])
    with pytest.raises(SystemExit, match=r"^transfuse-report: error: 'method': a key starts with tags\."):
        main([*base, "--rows", "method"])


def test_library_raises_report_error_not_system_exit(store, tracking_uri):
    # SystemExit is no Exception: were it raised, it would escape pytest.raises(ReportError) and fail the test
    with pytest.raises(ReportError) as caught:
        fetch_runs(store, ["study", "nope"])
    assert str(caught.value) == f"no experiment named 'nope' in {tracking_uri} (experiments: Default, study)"
    runs = fetch_runs(store, ["study"])
    with pytest.raises(ReportError, match=r"^no selected run has 'tags.pair' \(tags of the selected runs: tags\."):
        summarise(runs, ["tags.method", "tags.pair"], "test/acc")
    table = build_table({"test/acc": summarise(runs, ["tags.method"], "test/acc")}, ["tags.method"])
    with pytest.raises(ReportError, match="--curve needs exactly one --columns key"):
        curve_axis(table)


def test_unknown_rows_or_columns_key_is_one_error_line_naming_it(store, tracking_uri, capsys):
    base = ["--experiment", "study", "--tracking-uri", tracking_uri]
    with pytest.raises(SystemExit) as caught:
        main([*base, "--rows", "tags.methd"])
    assert str(caught.value) == (  # the closest key first, then the others; MLflow's own tags are not offered
        "transfuse-report: error: no selected run has 'tags.methd' (tags of the selected runs: tags.method, tags.seed)"
    )
    with pytest.raises(SystemExit) as caught:
        main([*base, "--columns", "params.data.train_per_class"])
    assert str(caught.value) == (
        "transfuse-report: error: no selected run has 'params.data.train_per_class' (params of the selected runs: none)"
    )
    assert capsys.readouterr().out == ""  # no table with a column of None


def test_a_key_only_some_runs_have_still_groups(sweeps):
    groups = summarise(fetch_runs(sweeps, ["sweep_a"]), ["tags.sweep_id"], "test/acc")
    assert {g.key: g.n for g in groups}[("None",)] == 1  # the run outside any sweep


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


def test_rows_missing_the_first_metric_appear_once_in_order_with_their_own_n(store, tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("study").experiment_id
    for run in client.search_runs([experiment], "attributes.status = 'FINISHED'"):
        if run.data.tags["method"] == "full":  # only one method has the first metric
            client.log_metric(run.info.run_id, "merge/scale", 0.5)
    out = tmp_path / "partial.md"
    select = ["--experiment", "study", "--tracking-uri", tracking_uri, "--order", "single,full,scratch"]
    main([*select, "--metric", "merge/scale,test/acc", "--markdown", str(out)])
    lines = out.read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| single", "| full", "| scratch"]
    assert lines[2] == "| single | n/a | 0.6000 | 1 |"
    assert lines[3] == "| full | **0.5000 ± 0.0000** | **0.8500 ± 0.0707** | 2 |"
    assert lines[4] == "| scratch | n/a | 0.7000 ± 0.2000 | 3 |"
    assert not lines[5].startswith("| ")  # three methods, three rows


def test_large_values_print_as_grouped_integers():
    from transfuse.report.render import _number

    assert _number(11181642.0) == "11,181,642" and _number(0.98444) == "0.9844" and _number(999.5) == "999.5000"


#: (method, labels per class) -> test/acc of each seed; names with LaTeX special characters on purpose
GRID = {
    ("linear_probe", "1"): [0.2, 0.4],
    ("linear_probe", "10"): [0.5, 0.6, 0.7],
    ("linear_probe", "100"): [0.8, 0.9],
    ("fine_tune & 50%", "1"): [0.1, 0.3],
    ("fine_tune & 50%", "10"): [0.6, 0.8],
    ("fine_tune & 50%", "100"): [0.9, 0.95],
}
PIVOT = ["--rows", "tags.method", "--columns", "params.data.train_per_class", "--order", "linear_probe"]


def by_hand(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation (n - 1) and standard error, straight from their definitions."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, std / math.sqrt(n)


def last(method: str, labels: str) -> list[float]:
    """test_last/acc of a cell: 0.05 below test/acc, and only the first two seeds logged it (older runs did not)."""
    return [v - 0.05 for v in GRID[method, labels][:2]]


@pytest.fixture
def grid(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("fewshot")
    for (method, labels), accuracies in GRID.items():
        for seed, accuracy in enumerate(accuracies):
            run_id = client.create_run(experiment, tags={"method": method}).info.run_id
            client.log_param(run_id, "data.train_per_class", labels)
            client.log_metric(run_id, "test/acc", accuracy)
            if seed < 2:
                client.log_metric(run_id, "test_last/acc", accuracy - 0.05)
            client.set_terminated(run_id, "FINISHED")
    return ["--experiment", "fewshot", "--tracking-uri", tracking_uri]


def read_csv(path) -> dict[tuple[str, ...], dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return {(r["tags.method"], r["params.data.train_per_class"], r["metric"]): r for r in csv.DictReader(handle)}


def test_csv_is_long_format_at_full_precision(grid, tmp_path):
    out = tmp_path / "table.csv"
    main([*grid, *PIVOT, "--csv", str(out)])
    assert out.read_text().splitlines()[0] == "tags.method,params.data.train_per_class,metric,mean,std,sem,n"
    lines = read_csv(out)
    assert len(lines) == len(GRID)
    for (method, labels), values in GRID.items():
        line = lines[method, labels, "test/acc"]
        mean, std, sem = by_hand(values)
        assert float(line["mean"]) == pytest.approx(mean, rel=1e-12)  # not rounded to the 4 decimals shown
        assert float(line["std"]) == pytest.approx(std, rel=1e-12)
        assert float(line["sem"]) == pytest.approx(sem, rel=1e-12)
        assert int(line["n"]) == len(values)
    assert float(lines["linear_probe", "10", "test/acc"]["sem"]) == pytest.approx(0.1 / math.sqrt(3))


def test_csv_leaves_the_spread_of_a_single_run_empty(store, tracking_uri, tmp_path):
    out = tmp_path / "table.csv"
    main(["--experiment", "study", "--tracking-uri", tracking_uri, "--csv", str(out)])
    assert "single,test/acc,0.6,,,1" in out.read_text().splitlines()


def test_latex_escapes_bolds_the_best_and_states_the_error(grid, tmp_path):
    out = tmp_path / "table.tex"
    main([*grid, *PIVOT, "--latex", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0].startswith("% ") and "sample standard deviation" in lines[0]
    assert "mean $\\pm$ std), n = 2 to 3 runs per cell" in lines[0] and "checkpoint: best validation" in lines[0]
    assert lines[1:4] == ["\\begin{tabular}{lrrr}", "\\toprule", "tags.method & 1 & 10 & 100 \\\\"]
    assert lines[4] == "\\midrule" and lines[-2:] == ["\\bottomrule", "\\end{tabular}"]

    def cell(method: str, labels: str, best: bool) -> str:
        mean, std, _ = by_hand(GRID[method, labels])
        text = f"{mean:.4f} $\\pm$ {std:.4f}"
        return f"\\textbf{{{text}}}" if best else text

    # best means: 1 label: linear_probe 0.3 > 0.2; 10 labels: fine_tune 0.7 > 0.6; 100: fine_tune 0.925 > 0.85
    lp = ["linear\\_probe", cell("linear_probe", "1", True), cell("linear_probe", "10", False)]
    ft = ["fine\\_tune \\& 50\\%", cell("fine_tune & 50%", "1", False), cell("fine_tune & 50%", "10", True)]
    assert lines[5] == " & ".join([*lp, cell("linear_probe", "100", False)]) + " \\\\"
    assert lines[6] == " & ".join([*ft, cell("fine_tune & 50%", "100", True)]) + " \\\\"
    assert "0.3000 $\\pm$ 0.1414" in lines[5]  # std of 0.2, 0.4 = sqrt(0.02)


def test_checkpoint_last_reads_test_last_metrics(grid, tmp_path, capsys):
    csv_out, tex = tmp_path / "last.csv", tmp_path / "last.tex"
    main([*grid, *PIVOT, "--checkpoint", "last", "--csv", str(csv_out), "--latex", str(tex)])
    lines = read_csv(csv_out)
    assert {key[2] for key in lines} == {"test_last/acc"}
    for method, labels in GRID:
        mean, std, sem = by_hand(last(method, labels))
        line = lines[method, labels, "test_last/acc"]
        assert float(line["mean"]) == pytest.approx(mean) and float(line["std"]) == pytest.approx(std)
        assert float(line["sem"]) == pytest.approx(sem)
        assert int(line["n"]) == 2  # the third linear_probe run at 10 labels has no test_last/acc: left out
    assert float(lines["linear_probe", "10", "test_last/acc"]["mean"]) == pytest.approx(0.5)  # (0.45 + 0.55) / 2
    assert "checkpoint: last epoch" in capsys.readouterr().out.splitlines()[-1]
    assert "checkpoint: last epoch" in tex.read_text().splitlines()[0]


def test_checkpoint_last_without_test_last_metrics_errors(store, tracking_uri):
    with pytest.raises(SystemExit, match="no FINISHED run with metric 'test_last/acc'"):
        main(["--experiment", "study", "--tracking-uri", tracking_uri, "--checkpoint", "last"])


SWEEP = "multirun/2026-11-25/07-01-02"


@pytest.fixture
def sweeps(tracking_uri):
    """Runs named by what their ``sweeps`` tag holds; ``other`` lives in a second experiment."""
    client = MlflowClient(tracking_uri)
    first, second = client.create_experiment("sweep_a"), client.create_experiment("sweep_b")
    runs = {
        "created": (first, SWEEP, "FINISHED"),
        "reused": (first, f"multirun/2026-11-24/10-00-00 {SWEEP}", "FINISHED"),
        "longer_id": (first, f"{SWEEP}0", "FINISHED"),  # the id is a prefix of this one
        "nested_id": (first, f"outputs/{SWEEP}", "FINISHED"),  # ... and a suffix of this one
        "prefix_id": (first, SWEEP[:-1], "FINISHED"),  # this id is a prefix of the one asked for
        "failed": (first, SWEEP, "FAILED"),
        "other": (second, SWEEP, "FINISHED"),
        "no_sweep": (first, None, "FINISHED"),
    }
    for name, (experiment, sweep_list, status) in runs.items():
        tags = {"method": name, **({"sweeps": sweep_list, "sweep_id": sweep_list.split()[0]} if sweep_list else {})}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.log_metric(run_id, "test/acc", 0.5)
        client.set_terminated(run_id, status)
    return client


def test_sweep_selects_exactly_the_runs_whose_sweeps_list_holds_the_id(sweeps):
    def methods(experiments, sweep):
        return sorted(r.data.tags["method"] for r in fetch_runs(sweeps, experiments, sweeps=[sweep]))

    assert methods(["sweep_a"], SWEEP) == ["created", "reused"]
    assert methods([], SWEEP) == ["created", "other", "reused"]  # no experiment named: every active one
    assert methods(["sweep_a", "sweep_b"], SWEEP[:-1]) == ["prefix_id"]
    assert methods([], "multirun/2026-11-24/10-00-00") == ["reused"]
    assert sorted(r.data.tags["method"] for r in fetch_runs(sweeps, [], sweeps=[SWEEP, SWEEP[:-1]])) == [
        "created",
        "other",
        "prefix_id",
        "reused",
    ]


def test_sweep_on_the_command_line_needs_no_experiment(sweeps, tracking_uri, tmp_path):
    out = tmp_path / "sweep.csv"
    main(["--sweep", SWEEP + "/", "--tracking-uri", tracking_uri, "--csv", str(out)])
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == ["created", "other", "reused"]
    with pytest.raises(SystemExit, match="name an --experiment, or a --sweep"):
        main(["--tracking-uri", tracking_uri])


def test_sweep_that_no_run_carries_names_the_newest_sweeps(sweeps, tracking_uri):
    with pytest.raises(SystemExit) as caught:
        main(["--tracking-uri", tracking_uri, "--sweep", "multirun/1999-01-01/00-00-00"])
    head, _, newest = str(caught.value).partition(" (newest sweeps: ")
    assert head == "transfuse-report: error: no run carries --sweep multirun/1999-01-01/00-00-00"
    assert SWEEP in newest.rstrip(")").split(", ")  # the exact ids to copy, whatever their order within a second
    with pytest.raises(SystemExit) as caught:
        main(["--tracking-uri", tracking_uri, "--sweep", SWEEP, "--experiment", "Default"])
    assert str(caught.value) == (
        f"transfuse-report: error: no run in 'Default' carries --sweep {SWEEP} (no run carries a sweep id)"
    )


def test_sweep_whose_runs_did_not_finish_or_match_says_so(sweeps, tracking_uri):
    base = ["--tracking-uri", tracking_uri]
    with pytest.raises(SystemExit) as caught:
        main([*base, "--sweep", SWEEP, "--experiment", "sweep_a", "--filter", "tags.method = 'other'"])
    assert str(caught.value) == (  # created and reused FINISHED, failed FAILED; only 'other' matches the filter
        f"transfuse-report: error: --sweep {SWEEP} ran 3 run(s) in 'sweep_a' (2 FINISHED, 1 FAILED), but no FINISHED "
        "one matches that --filter"
    )
    broken = "multirun/2026-11-26/08-00-00"
    run_id = sweeps.create_run(sweeps.get_experiment_by_name("sweep_b").experiment_id, tags={"sweeps": broken})
    sweeps.set_terminated(run_id.info.run_id, "FAILED")
    with pytest.raises(SystemExit) as caught:
        main([*base, "--sweep", broken])
    assert str(caught.value) == f"transfuse-report: error: --sweep {broken} ran 1 run(s) (1 FAILED), none FINISHED"


def test_sweep_whose_runs_lack_the_metric_names_the_metrics_they_have(sweeps, tracking_uri):
    with pytest.raises(SystemExit) as caught:
        main(["--tracking-uri", tracking_uri, "--sweep", SWEEP, "--metric", "test/f1"])
    assert str(caught.value) == (  # the sweep has FINISHED runs, just not that metric
        f"transfuse-report: error: no FINISHED run of --sweep {SWEEP} with metric 'test/f1' matches "
        "(metrics they have: test/acc)"
    )


def test_bar_and_curve_write_pngs_of_the_figure_size(grid, tmp_path):
    from transfuse.plotting import DPI
    from transfuse.plotting.report import BAR_SIZE, CURVE_SIZE, use_log_scale

    bar, grouped, curve = tmp_path / "bar.png", tmp_path / "grouped.png", tmp_path / "fig" / "curve.png"
    main([*grid, "--bar", str(bar)])
    main([*grid, *PIVOT, "--bar", str(grouped), "--curve", str(curve), "--error", "sem"])
    for path, size in ((bar, BAR_SIZE), (grouped, BAR_SIZE), (curve, CURVE_SIZE)):
        assert png_size(path) == (round(size[0] * DPI), round(size[1] * DPI))
    assert use_log_scale([1, 10, 100]) and not use_log_scale([10, 20, 50]) and not use_log_scale([0, 100])


def test_curve_needs_one_numeric_column_key(grid, tmp_path):
    curve = tmp_path / "curve.png"
    swapped = ["--rows", "params.data.train_per_class", "--columns", "tags.method", "--curve", str(curve)]
    with pytest.raises(
        SystemExit, match=re.escape("--curve needs numeric values of tags.method, got 'fine_tune & 50%'")
    ):
        main([*grid, *swapped])
    with pytest.raises(SystemExit, match="--curve needs exactly one --columns key"):
        main([*grid, "--curve", str(curve)])
    assert not curve.exists()


def test_log_stores_the_report_as_a_finished_run(grid, tracking_uri, tmp_path, capsys):
    main([*grid, *PIVOT, "--bar", str(tmp_path / "bar.png"), "--checkpoint", "last", "--log"])
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("transfuse-reports")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "report"
    params = run.data.params
    assert params["experiments"] == "fewshot" and params["checkpoint"] == "last" and params["error"] == "std"
    assert params["metrics"] == "test_last/acc"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert names == {"report/report.md", "report/report.csv", "report/report.tex", "report/bar.png"}
    assert run.info.run_id in capsys.readouterr().out.splitlines()[-1]


def test_log_marks_the_run_failed_when_logging_raises(grid, tracking_uri, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(MlflowClient, "log_artifacts", broken)
    with pytest.raises(OSError, match="unreachable"):
        main([*grid, "--log", "--log-experiment", "reports"])
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("reports").experiment_id])
    assert run.info.status == "FAILED"


# --- cells that average unlike runs, columns that compare unlike test data ----------------------------------------

#: (method, data, max_epochs) -> test/acc of seeds 0, 1, ...; the recipe_hash tag stands for (method, max_epochs)
DIGITS = {
    ("source_pretrain", "mnist5k", "5"): [0.99, 0.98, 0.99],
    ("full", "digits", "30"): [0.9, 0.92, 0.91],
    ("full", "digits", "6"): [0.8, 0.82],
    ("full", "digits", "1"): [0.3],
    ("scratch", "digits", "30"): [0.7, 0.72, 0.71],
}


def log_finished(client, experiment, tags, params, accuracy) -> str:
    from mlflow.entities import Param

    run_id = client.create_run(experiment, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    client.log_metric(run_id, "test/acc", accuracy)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def digits(tracking_uri):
    """What a few README commands leave: a source pretraining on mnist5k and digits runs of 30, 6 and 1 epochs."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("digits_transfer")
    for (method, data, epochs), accuracies in DIGITS.items():
        for seed, accuracy in enumerate(accuracies):
            tags = {"method": method, "data": data, "seed": str(seed), "recipe_hash": f"{method}-{epochs}"}
            params = {"seed": str(seed), "trainer.max_epochs": epochs, "optimizer.lr": "0.01", "tags.seed": str(seed)}
            log_finished(client, experiment, tags, params, accuracy)
    return ["--experiment", "digits_transfer", "--tracking-uri", tracking_uri, "--metric", "test/acc"]


def test_a_cell_mixing_recipes_is_marked_and_a_column_mixing_test_data_has_no_best(digits, capsys):
    main(digits)
    lines = capsys.readouterr().out.splitlines()
    full = by_hand([a for (method, *_), values in DIGITS.items() if method == "full" for a in values])
    scratch, source = by_hand(DIGITS["scratch", "digits", "30"]), by_hand(DIGITS["source_pretrain", "mnist5k", "5"])
    assert lines[2] == f"| full | {full[0]:.4f} ± {full[1]:.4f} † | 6 |"  # 30, 6 and 1 epochs averaged
    assert lines[3] == f"| scratch | {scratch[0]:.4f} ± {scratch[1]:.4f} | 3 |"  # three seeds of one recipe: no mark
    assert lines[4] == f"| source_pretrain | {source[0]:.4f} ± {source[1]:.4f} | 3 |"  # tested on mnist5k: no bold
    assert lines[6].startswith("test/acc (mean ± std), n = 3 to 6 runs per cell;")
    assert lines[8] == "† full: 3 recipes averaged, not only seeds; params.trainer.max_epochs differs (30, 6, 1)"
    assert lines[10] == (
        "test/acc: no best marked, its rows test on different data (digits: full, scratch; mnist5k: source_pretrain)"
    )
    assert len(lines) == 11


def test_rows_on_the_same_data_get_their_best_back(digits, tmp_path, capsys):
    tex = tmp_path / "table.tex"
    main([*digits, "--filter", "tags.data = 'digits'", "--latex", str(tex)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| full | **0.7750 ± ") and lines[2].endswith("** † | 6 |")
    assert not any("test on different data" in line for line in lines)
    latex = tex.read_text().splitlines()
    assert latex[1] == "% \\textsuperscript{\\textdagger} full: 3 recipes averaged, not only seeds; " + (
        "params.trainer.max\\_epochs differs (30, 6, 1)"
    )
    full = next(line for line in latex if line.startswith("full &"))
    assert full.endswith("}\\textsuperscript{\\textdagger} & 6 \\\\")


def test_strict_refuses_mixed_recipes_and_mixed_test_data_in_one_line(digits, capsys):
    with pytest.raises(SystemExit) as caught:
        main([*digits, "--strict"])
    assert str(caught.value) == (
        "transfuse-report: error: --strict: runs differ in more than the seed in full (params.trainer.max_epochs); "
        "rows test on different data in test/acc (digits, mnist5k)"
    )
    assert capsys.readouterr().out == ""  # refused before any table
    main([*digits, "--strict", "--filter", "params.trainer.max_epochs = '30'"])  # seeds of one recipe per row
    assert capsys.readouterr().out.splitlines()[2].startswith("| full | **0.9100 ± 0.0100** | 3 |")


def test_runs_without_a_recipe_tag_are_compared_by_params_without_the_seed(tracking_uri, capsys):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("old")

    def params(seed: int, lr: str = "1e-05") -> dict[str, str]:
        return {
            "seed": str(seed),
            "tags.seed": str(seed),
            "data.subset_seed": str(seed),
            "run_name": f"finetune-digits-resnet18-s{seed}",
            "init.weights": f"tags.stage = 'pretrain' and params.seed = '{seed}'",
            "paths.output_dir": f"outputs/2026-01-0{seed}",  # NOT_HASHED: where, not what
            "optimizer.lr": lr,  # 1e-05 holds the digit 1, but not as the seed
            "optimizer.betas": "[0.9, 0.999]",
        }

    for seed in range(3):
        log_finished(client, experiment, {"method": "full", "data": "digits"}, params(seed), 0.8 + seed / 100)
    main(["--experiment", "old", "--tracking-uri", tracking_uri])
    out = capsys.readouterr().out
    assert "†" not in out and "| full | **0.8100 ± 0.0100** | 3 |" in out
    log_finished(client, experiment, {"method": "full", "data": "digits"}, params(3, "0.001"), 0.5)
    main(["--experiment", "old", "--tracking-uri", tracking_uri])
    note = capsys.readouterr().out.splitlines()[-1]
    assert note == "† full: 2 recipes averaged, not only seeds; params.optimizer.lr differs (1e-05, 0.001)"


def test_adaptation_runs_are_tested_on_their_target_data(tracking_uri, capsys):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("adaptation")
    rows = {"dann": ("mnist5k", "usps", 0.7), "source_only": ("mnist5k", "usps", 0.5), "target": ("usps", None, 0.9)}
    for method, (data, target, accuracy) in rows.items():
        tags = {"method": method, "data": data, **({"target_data": target, "stage": "adapt"} if target else {})}
        run_id = log_finished(client, experiment, tags, {}, accuracy)
        client.log_metric(run_id, "test_source/acc", 0.95)
    main(["--experiment", "adaptation", "--tracking-uri", tracking_uri, "--metric", "test/acc,test_source/acc"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[4] == "| target | **0.9000** | 0.9500 | 1 |"  # test/acc: every row tests on usps; not test_source
    assert lines[-1] == (  # test_source/acc is the source's test split
        "test_source/acc: no best marked, its rows test on different data (mnist5k: dann, source_only; usps: target)"
    )


def test_runs_of_several_installs_commits_or_devices_are_named_and_strict_refuses_them(tracking_uri, capsys):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("setups")
    setups = [("aaaa", "c1", "CPU X"), ("aaaa", "c1", "CPU X"), ("bbbb", "c2+dirty", "NVIDIA H200 x1")]
    for seed, (env, commit, device) in enumerate(setups):
        tags = {"method": "full", "data": "digits", "recipe_hash": "r", "env.hash": env, "git_commit": commit}
        log_finished(client, experiment, {**tags, "env.device": device}, {"seed": str(seed)}, 0.5 + seed / 10)
    args = ["--experiment", "setups", "--tracking-uri", tracking_uri, "--metric", "test/acc", "--rows", "tags.method"]
    main(args)
    note = capsys.readouterr().out.splitlines()[-1]
    assert note == (
        "runs from 2 environments (env.hash): aaaa (2 runs), bbbb (1 run); runs from 2 code versions: c1 (2 runs), "
        "c2+dirty (1 run); runs from 2 devices: CPU X (2 runs), NVIDIA H200 x1 (1 run); 1 run from code with "
        "uncommitted changes (+dirty)"
    )
    with pytest.raises(SystemExit) as caught:
        main([*args, "--strict"])
    assert str(caught.value) == (
        "transfuse-report: error: --strict: runs come from different environments (env.hash), code versions, "
        "devices, a dirty tree"
    )
    main([*args, "--strict", "--filter", "tags.`env.hash` = 'aaaa'"])  # one install, one commit, one device
    assert "environments" not in capsys.readouterr().out


def test_a_run_records_its_environment(tracking_uri):
    import torch

    from transfuse.tracking.environment import distributions
    from transfuse.tracking.run import tracked_run

    with tracked_run(tracking_uri, "env", "one") as run:
        pass
    client = MlflowClient(tracking_uri)
    tags = client.get_run(run.run_id).data.tags
    assert tags["env.torch"] == torch.__version__.split("+")[0] or tags["env.torch"] == torch.__version__
    assert tags["env.threads"] == str(torch.get_num_threads())
    assert len(tags["env.hash"]) == 12 and tags["env.device"]
    assert tags["mlflow.source.name"]
    listed = client.download_artifacts(run.run_id, "environment.txt")
    lines = Path(listed).read_text().splitlines()
    assert f"torch=={tags['env.torch']}" in lines and lines[-len(distributions()) :] == list(distributions())


def test_what_sets_recipes_apart_ignores_the_seed_but_not_values_that_equal_it():
    from types import SimpleNamespace

    from transfuse.report.checks import differing_keys

    def run(seed: int, epochs: int) -> SimpleNamespace:
        params = {
            "seed": str(seed),
            "data.subset_seed": str(seed),  # follows the seed
            "source_query": f"tags.stage = 'pretrain' and params.seed = '{seed}'",
            "callbacks.save_top_k": "1",  # equals seed 1's value without following it
            "data.split_seed": "0",  # equals seed 0's value without following it
            "trainer.max_epochs": str(epochs),
        }
        return SimpleNamespace(data=SimpleNamespace(params=params))

    # one run per recipe, each of another seed: only the epochs set them apart
    assert differing_keys([[run(0, 30)], [run(1, 6)], [run(2, 1)]]) == {"params.trainer.max_epochs": ["30", "6", "1"]}
    # several seeds per recipe: the same
    groups = [[run(0, 30), run(1, 30)], [run(0, 6), run(1, 6)]]
    assert differing_keys(groups) == {"params.trainer.max_epochs": ["30", "6"]}
    # a query that names other stages in the two recipes is compared with the seed masked
    other = [run(0, 30), run(1, 30)]
    for one in other:
        one.data.params["source_query"] = one.data.params["source_query"].replace("pretrain", "finetune")
    found = differing_keys([groups[0], other])
    assert list(found) == ["params.source_query"]
    assert found["params.source_query"][1] == "tags.stage = 'finetune' and params.seed = '<seed>'"
