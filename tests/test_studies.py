"""Shortened versions of the studies in experiments/: every step runs, links and reports.

Only what holds for any seed and a few epochs is asserted (runs finish, lineage, one row per method);
the accuracies themselves are the studies' business.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from transfuse.report import fetch_runs, summarise
from transfuse.train import train

SHORT = [
    "backbone=test_resnet",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "last_checkpoint=none",
    "study_run=short",
]

STUDIES = {
    "digits_transfer": [
        ("pretrain", []),
        ("source_only", []),
        ("scratch", []),
        ("finetune", ["finetune=linear_probe"]),
        ("finetune", ["finetune=full"]),
    ],
    "digits_finetune": [
        ("source", []),
        ("scratch", ["data.train_per_class=5"]),
        ("finetune", ["finetune=linear_probe", "data.train_per_class=5"]),
        ("finetune", ["finetune=lp_ft", "finetune.probe_epochs=1", "data.train_per_class=5"]),
        ("finetune", ["finetune=partial", "data.train_per_class=5"]),
        ("finetune", ["finetune=l2_sp", "optimizer.weight_decay=0", "data.train_per_class=5"]),
        ("finetune", ["finetune.layer_decay=0.6", "tags.method=layer_decay", "data.train_per_class=5"]),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_shortened_study_runs_end_to_end(make_config, study):
    for experiment, overrides in STUDIES[study]:
        cfg = make_config(f"experiment={study}/{experiment}", *SHORT, *overrides)
        train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    runs = fetch_runs(client, [study])
    assert len(runs) == len(STUDIES[study])  # every step FINISHED
    sources = [r for r in runs if r.data.tags["data"] == "mnist5k"]
    assert len(sources) == 1
    source_run = sources[0].info.run_id
    transfers = [r for r in runs if r.data.tags["stage"] in ("finetune", "evaluate")]
    assert transfers and all(r.data.tags["source_run_id"] == source_run for r in transfers)
    groups = summarise([r for r in runs if r.data.tags["data"] == "digits"], ["tags.method"], "test/acc")
    expected = {o[0].split("=")[1] if o and o[0].startswith("finetune=") else None for _, o in STUDIES[study]}
    methods = {g.key[0] for g in groups}
    assert {m for m in expected if m} <= methods
    assert all(g.n == 1 and 0.0 <= g.mean <= 1.0 for g in groups)


@pytest.mark.slow
def test_shortened_adaptation_study_lays_out_methods_by_pair(make_config):
    pair = ["data=mnist5k", "data@target_data=digits"]
    steps = [
        ("adapt", [*pair, "adapt=source_only"]),
        ("adapt", [*pair, "adapt=coral"]),
        ("adabn", ["data=digits", "source_data=mnist5k"]),
        ("adapt", ["data=digits", "data@target_data=digits", "adapt=source_only", "tags.method=oracle"]),
    ]
    for experiment, overrides in steps:
        cfg = make_config(f"experiment=digits_adaptation/{experiment}", *SHORT, *overrides)
        if "tags.method=oracle" in overrides:
            cfg.tags.pair = "mnist5k->digits"  # as run.sh sets it on the command line
        train(cfg)
    runs = fetch_runs(MlflowClient(cfg.logger.tracking_uri), ["digits_adaptation"])
    assert len(runs) == len(steps)  # every step FINISHED
    by_method = {r.data.tags["method"]: r for r in runs}
    assert set(by_method) == {"source_only", "coral", "adabn", "oracle"}
    assert {r.data.tags["pair"] for r in runs} == {"mnist5k->digits"}
    assert by_method["adabn"].data.tags["source_run_id"] == by_method["source_only"].info.run_id
    assert by_method["coral"].data.metrics["train/align_loss"] > 0
    groups = summarise(runs, ["tags.method", "tags.pair"], "test/acc")
    assert len(groups) == 4 and all(0.0 <= g.mean <= 1.0 for g in groups)


@pytest.mark.slow
def test_shortened_source_ranking_correlates_scores_with_fine_tuning(make_config):
    import importlib.util

    from transfuse.config import EXPERIMENTS_DIR

    candidates = {"mnist": [], "mnist_10pc": ["data.train_per_class=10"], "shapes": ["data=synthetic"]}
    for name, overrides in candidates.items():
        train(make_config("experiment=source_ranking/source", f"candidate={name}", *SHORT, *overrides))
    for name in candidates:
        train(make_config("experiment=source_ranking/score", f"candidate={name}", *SHORT))
        cfg = make_config("experiment=source_ranking/finetune", f"candidate={name}", *SHORT)
        train(cfg)
    spec = importlib.util.spec_from_file_location("rank", EXPERIMENTS_DIR / "source_ranking" / "rank.py")
    rank = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rank)
    table = rank.table(MlflowClient(cfg.logger.tracking_uri), "short")
    assert all(f"| {name} |" in table for name in candidates)
    assert "| transfer/logme | 3 |" in table and "n/a (other classes)" in table  # shapes has no LEEP


@pytest.mark.slow
def test_shortened_soups_study_fuses_members_of_one_and_of_two_initialisations(make_config, tracking_uri, tmp_path):
    from transfuse.config import compose_config
    from transfuse.errors import FusionError
    from transfuse.fuse import fuse

    train(make_config("experiment=digits_soups/source", "source=a", *SHORT))
    train(make_config("experiment=digits_soups/source", "source=b", "seed=1", *SHORT))
    for lr in ("1e-4", "1e-3"):
        train(make_config("experiment=digits_soups/member", "source=a", f"optimizer.lr={lr}", *SHORT))
    train(make_config("experiment=digits_soups/member", "source=b", *SHORT))

    def fused(*overrides):
        common = [f"logger.tracking_uri={tracking_uri}", "study_run=short", "backbone=test_resnet"]
        student = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.enable_progress_bar=false"]
        return fuse(compose_config("fuse", ["experiment=digits_soups/fuse", *common, *student, *overrides], tmp_path))

    for method in ("best_member", "uniform_soup", "greedy_soup", "logit_mean", "stacking", "distill"):
        fused(f"fusion_method={method}")
    with pytest.raises(FusionError, match="another initialisation"):
        fused("members_of=mixed", "fusion_method=uniform_soup")
    forced = fused(
        "members_of=mixed", "fusion_method=uniform_soup", "fusion_method.uniform_soup.require_shared_init=false"
    )
    assert forced["cost/members_used"] == 3
    runs = fetch_runs(MlflowClient(tracking_uri), ["digits_soups"], "tags.role = 'fusion'")
    assert len(runs) == 7  # the refused soup ended FAILED and is not counted
    same = [r for r in runs if r.data.tags["pool"] == "a"]
    assert all(r.data.tags["member_count"] == "2" for r in same)
    greedy = next(r for r in same if r.data.tags["method"] == "greedy_soup").data.metrics
    assert greedy["val/acc"] >= max(greedy["member/0/val/acc"], greedy["member/1/val/acc"])


@pytest.mark.slow
def test_shortened_noisy_mnist_fusion_study_has_a_row_per_view_and_fusion(make_config):
    methods = {
        "view1_rotated": ["data.keep_views=[0]"],
        "view2_noisy": ["data.keep_views=[1]"],
        "early": ["multi_input=early"],
        "feature_gated": ["multi_input=feature", "head=gated"],
        "late": ["multi_input=late"],
    }
    for method, overrides in methods.items():
        cfg = make_config("experiment=noisy_mnist_fusion/base", f"tags.method={method}", *SHORT, *overrides)
        train(cfg)
    runs = fetch_runs(MlflowClient(cfg.logger.tracking_uri), ["noisy_mnist_fusion"])
    by_method = {r.data.tags["method"]: r for r in runs}
    assert set(by_method) == set(methods)  # every run FINISHED under its own row
    assert {by_method[m].data.tags.get("multi_input") for m in ("early", "feature_gated", "late")} == {
        "early",
        "feature",
        "late",
    }
    groups = summarise(runs, ["tags.method"], "test/acc")
    assert len(groups) == len(methods) and all(g.n == 1 and 0.0 <= g.mean <= 1.0 for g in groups)


@pytest.mark.slow
def test_shortened_yosinski_study_copies_n_blocks_from_a_or_from_b(make_config):
    train(make_config("experiment=yosinski2014/source", *SHORT))
    train(make_config("experiment=yosinski2014/scratch", *SHORT))
    for experiment, overrides in [
        ("copy_frozen", ["base=A", "n=2"]),
        ("copy_frozen", ["base=B", "n=2"]),
        ("copy_tuned", ["base=A", "n=2"]),
        ("transfer", ["finetune.freeze_blocks=2"]),
    ]:
        cfg = make_config(f"experiment=yosinski2014/{experiment}", *SHORT, *overrides)
        train(cfg)
    runs = fetch_runs(MlflowClient(cfg.logger.tracking_uri), ["yosinski2014"], "tags.data = 'digits'")
    groups = summarise(runs, ["tags.method", "tags.n"], "test/acc", order=["scratch", "AnB", "AnB+", "BnB"])
    assert [g.key for g in groups] == [("scratch", "0"), ("AnB", "2"), ("AnB+", "2"), ("BnB", "2"), ("AnB_warm", "2")]
    by_method = {r.data.tags["method"]: r for r in runs}
    source = fetch_runs(MlflowClient(cfg.logger.tracking_uri), ["yosinski2014"], "tags.data = 'mnist5k'")[0]
    assert by_method["BnB"].data.tags["source_run_id"] == by_method["scratch"].info.run_id  # the selffer control
    assert {by_method[m].data.tags["source_run_id"] for m in ("AnB", "AnB+", "AnB_warm")} == {source.info.run_id}
    assert by_method["AnB"].data.params["init.copy_blocks"] == "2"
    assert by_method["AnB_warm"].data.params["init.copy_blocks"] == "None"


@pytest.mark.slow
def test_shortened_lpft_study_tests_each_method_in_and_out_of_distribution(make_config):
    methods = {"linear_probe": [], "full": [], "lp_ft": ["finetune.probe_epochs=1"]}
    train(make_config("experiment=kumar2022_lpft/source", *SHORT))
    train(make_config("experiment=kumar2022_lpft/source_only", *SHORT))
    for method, overrides in methods.items():
        train(make_config("experiment=kumar2022_lpft/finetune", f"finetune={method}", *SHORT, *overrides))
    for method in methods:
        cfg = make_config("experiment=kumar2022_lpft/ood", f"target_method={method}", *SHORT)
        train(cfg)
    runs = fetch_runs(MlflowClient(cfg.logger.tracking_uri), ["kumar2022_lpft"])
    groups = summarise(runs, ["tags.method", "tags.data"], "test/acc")
    assert {g.key for g in groups} == {(m, d) for m in ("source", *methods) for d in ("digits", "mnist5k")}
    # each OOD test starts from the fine-tune of its own method
    finetuned = {r.data.tags["method"]: r.info.run_id for r in runs if r.data.tags["stage"] == "finetune"}
    ood = [r for r in runs if r.data.tags["stage"] == "evaluate" and r.data.tags["data"] == "mnist5k"]
    assert {r.data.tags["method"]: r.data.tags["source_run_id"] for r in ood} == finetuned
