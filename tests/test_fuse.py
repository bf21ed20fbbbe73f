"""transfuse-fuse over real runs trained in the test, read back from MLflow."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient

from tests.conftest import FAST, compose_config, run_cli
from transfuse import weights
from transfuse.config import compose_config as compose_named
from transfuse.errors import FusionError
from transfuse.fuse import fuse
from transfuse.models.build import build_model
from transfuse.models.summary import count_flops
from transfuse.tracking.datasets import content_digest
from transfuse.train import train

DATA = ["data=synthetic", "data.per_class=24"]


@pytest.fixture(scope="module")
def zoo(module_dir):
    """A source pretraining and two fine-tunes of it (other seed and learning rate), all FINISHED."""
    root = module_dir
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment = "zoo"
    counter = itertools.count()

    def run(*overrides):
        overrides = [*FAST, f"logger.tracking_uri={uri}", "logger.experiment_name=zoo", *overrides]
        cfg = compose_config(overrides, root / f"run{next(counter)}")
        train(cfg)
        runs = client.search_runs(
            [client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time DESC"]
        )
        return runs[0]

    source = run("+tags.role=source")
    members = [
        run("stage=finetune", f"init.weights=runs:/{source.info.run_id}", f"seed={seed}", f"optimizer.lr={lr}")
        for seed, lr in ((1, 1e-3), (2, 3e-3))
    ]
    return root, uri, source, members


def _fuse(zoo, *overrides, ids=None):
    root, uri, _, members = zoo
    ids = ids if ids is not None else [m.info.run_id for m in members]
    pool = f"pool.runs=[{','.join(ids)}]"
    cfg = compose_named(
        "fuse", [*DATA, f"logger.tracking_uri={uri}", "logger.experiment_name=fused", pool, *overrides], root / "fuse"
    )
    return cfg, fuse(cfg)


def _latest(uri, experiment="fused"):
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time DESC"]
    )
    return client, runs[0]


def _hand_logits(zoo, run) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's test logits through the training code path (ImageClassifier), not the fusion one."""
    root, uri, _, _ = zoo
    cfg = compose_config([*FAST, f"logger.tracking_uri={uri}"], root / "hand")
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule.class_names)
    weights.load_into(
        model, weights.resolve(f"runs:/{run.info.run_id}", MlflowClient(uri), model.backbone), model.class_names
    )
    model.eval()
    test = datamodule.splits["test"]
    with torch.no_grad():
        return model(datamodule.transform(test.images, train=False)), test.labels


def test_logit_mean_is_tracked_with_its_members_and_matches_a_hand_ensemble(zoo):
    _, uri, _, members = zoo
    cfg, metrics = _fuse(zoo, "fusion_method=logit_mean")
    _, run = _latest(uri)
    assert run.info.status == "FINISHED"
    ids = [m.info.run_id for m in members]
    assert run.data.tags["members"] == ",".join(ids) and run.data.tags["member.1"] == ids[1]
    assert run.data.tags["stage"] == "fuse" and run.data.tags["method"] == "logit_mean"
    assert ids[0] in run.data.tags["mlflow.note.content"]
    # datasets: the fusion's own data, and what the members trained on unless it is the same dataset
    member_data = {d.dataset.digest for m in members for d in m.inputs.dataset_inputs}
    own = instantiate(cfg.data)
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == member_data | {
        content_digest(own.splits, own.class_names)
    }
    for i, member in enumerate(members):  # each member scores on the fusion's test split what it scored in training
        assert run.data.metrics[f"member/{i}/test/acc"] == pytest.approx(member.data.metrics["test/acc"], abs=1e-6)
    hand = [_hand_logits(zoo, m) for m in members]
    labels = hand[0][1]
    expected = ((hand[0][0] + hand[1][0]) / 2).argmax(1).eq(labels).float().mean().item()
    assert run.data.metrics["test/acc"] == pytest.approx(expected, abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(run.data.metrics["test/acc"])
    one = build_model(compose_config(FAST, zoo[0] / "p"), ["a", "b", "c", "d"]).eval()
    params = sum(p.numel() for p in one.parameters())
    assert run.data.metrics["cost/params"] == 2 * params  # an ensemble costs all of its members
    flops = count_flops(lambda x: one.head(one.backbone(x)), torch.zeros(1, 3, 32, 32))
    assert run.data.metrics["cost/flops"] == pytest.approx(2 * flops)
    assert run.data.metrics["cost/checkpoint_mb"] == pytest.approx(2 * 4 * params / 1e6, rel=0.2)
    for key in ("cost/latency_ms_b1", "cost/latency_ms_b256", "cost/latency_ms_per_image"):
        assert run.data.metrics[key] > 0
    # figures of the fused test predictions; no learning curves, as nothing was trained
    plots = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/reliability_diagram.png"}


@pytest.mark.parametrize(
    "method",
    [
        "best_member",
        "prob_mean",
        "vote",
        "weighted",
        "stacking",
        "uniform_soup",
        "feature_concat",
        "task_arithmetic",
        "ties",
        "fisher",
    ],
)
def test_every_method_runs_over_real_members(zoo, method):
    _, uri, _, _ = zoo
    _fuse(zoo, f"fusion_method={method}")
    _, run = _latest(uri)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == method
    assert 0.0 <= run.data.metrics["test/acc"] <= 1.0 and "val/ece" in run.data.metrics
    if method in ("best_member", "weighted", "stacking", "uniform_soup"):
        assert run.data.metrics["weight/0"] + run.data.metrics["weight/1"] == pytest.approx(1.0, abs=1e-5)
    if method == "best_member":  # exactly the member validation picks
        assert run.data.metrics["test/acc"] == pytest.approx(run.data.metrics["members/best_val/test/acc"])


def test_greedy_soup_beats_no_member_on_val_and_saves_weights_training_can_load(zoo, tmp_path):
    _, uri, _, _ = zoo
    _, metrics = _fuse(zoo, "fusion_method=greedy_soup")
    _, run = _latest(uri)
    best_member_val = max(run.data.metrics[f"member/{i}/val/acc"] for i in range(2))
    assert run.data.metrics["val/acc"] >= best_member_val
    params = run.data.metrics["cost/params"]
    assert params > 0 and run.data.metrics["cost/members_used"] in (1.0, 2.0)
    # the soup is a checkpoint: evaluating it with transfuse-train reproduces the fused test accuracy
    cfg = compose_config(
        [*FAST, f"logger.tracking_uri={uri}", "stage=evaluate", f"init.weights=runs:/{run.info.run_id}"], tmp_path
    )
    evaluated = train(cfg)
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_members_without_a_shared_start_are_refused_before_any_run(zoo):
    _, uri, source, members = zoo
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fused")
    before = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    with pytest.raises(FusionError, match="trained from scratch"):
        _fuse(zoo, "fusion_method=[logit_mean,uniform_soup]", ids=[source.info.run_id, members[0].info.run_id])
    experiment = client.get_experiment_by_name("fused")  # not even the ensemble, which could fuse them, ran
    assert (len(client.search_runs([experiment.experiment_id])) if experiment else 0) == before


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_task_vectors_of_members_without_a_shared_source_are_refused_before_any_run(zoo, method):
    _, uri, source, members = zoo
    client = MlflowClient(uri)
    before = len(client.search_runs([client.get_experiment_by_name("fused").experiment_id]))
    with pytest.raises(FusionError, match="trained from scratch: merging task vectors needs members"):
        _fuse(zoo, f"fusion_method={method}", ids=[members[0].info.run_id, source.info.run_id])
    assert len(client.search_runs([client.get_experiment_by_name("fused").experiment_id])) == before


def test_task_arithmetic_merges_from_the_members_source_and_logs_its_scale(zoo):
    _, uri, _, _ = zoo
    _fuse(zoo, "fusion_method=task_arithmetic", "fusion_method.task_arithmetic.scales=[0.5]")
    _, run = _latest(uri)
    assert run.info.status == "FINISHED" and run.data.metrics["merge/scale"] == 0.5
    # scale 1/M of two members is the uniform soup, BatchNorm statistics re-estimated alike
    soup_metrics = _fuse(zoo, "fusion_method=uniform_soup")[1]
    assert run.data.metrics["test/acc"] == pytest.approx(soup_metrics["test/acc"], abs=1e-6)


def test_bad_pools_fail_clearly(zoo):
    _, uri, _, members = zoo
    with pytest.raises(FusionError, match="no MLflow run with id 'nope'"):
        _fuse(zoo, ids=["nope"])
    with pytest.raises(FusionError, match="not both"):
        _fuse(zoo, "pool.filter=\"tags.stage = 'finetune'\"")
    with pytest.raises(FusionError, match="no FINISHED run matches"):
        _fuse(zoo, "pool.filter=\"tags.stage = 'nothing'\"", ids=[])
    # a filter selects the members too
    _fuse(zoo, "pool.filter=\"tags.stage = 'finetune'\"", "pool.experiments=[zoo]", ids=[])
    _, run = _latest(uri)
    assert run.info.status == "FINISHED"
    assert set(run.data.tags["members"].split(",")) == {m.info.run_id for m in members}


@pytest.mark.slow  # a subprocess: about 10 s; test_bad_pools_fail_clearly checks the message in-process
def test_cli_prints_one_line_for_a_wrong_run_id(tmp_path):
    result = run_cli("transfuse.fuse", [*DATA, "pool.runs=[abc123]"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "transfuse-fuse: error: no MLflow run with id 'abc123' in sqlite:///mlflow.db"
    client = MlflowClient(f"sqlite:///{Path(tmp_path) / 'mlflow.db'}")
    assert client.get_experiment_by_name("transfuse") is None  # members are checked before the fusion run opens


def test_distilled_student_is_one_model_that_training_can_load(zoo, tmp_path):
    _, uri, source, _ = zoo
    student = ["backbone=test_resnet", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
    cfg, metrics = _fuse(
        zoo, "fusion_method=distill", f"fusion_method.distill.student_init=runs:/{source.info.run_id}", *student
    )
    client, run = _latest(uri)
    assert run.info.status == "FINISHED" and run.data.tags["source_run_id"] == source.info.run_id
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))  # the run holds the student, the folder no copy
    assert "train/distill_loss" in run.data.metrics and len(client.get_metric_history(run.info.run_id, "val/acc")) >= 2
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/learning_curves.png"}
    # one student: the parameters of one test_resnet classifier, not of the two members
    one = build_model(compose_config(FAST, tmp_path / "p"), ["a", "b", "c", "d"])
    assert run.data.metrics["cost/params"] == sum(p.numel() for p in one.parameters())
    cfg = compose_config(
        [*FAST, f"logger.tracking_uri={uri}", "stage=evaluate", f"init.weights=runs:/{run.info.run_id}"], tmp_path
    )
    assert train(cfg)["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


@pytest.mark.parametrize(
    "payload",
    [
        "backbone: {_target_: os.makedirs, name: PWNED}\nhead: {_target_: transfuse.models.LinearHead}",
        "backbone: {_target_: transfuse.models.TimmBackbone, name: resnet18}\n"
        "head: {_target_: transfuse.models.LinearHead, dropout: {_target_: os.makedirs, name: PWNED}}",
        "backbone: {_target_: torch.load, f: PWNED, weights_only: false}\n"
        "head: {_target_: transfuse.models.LinearHead}",
    ],
)
def test_a_member_config_naming_foreign_code_is_refused_before_anything_runs(tmp_path, tracking_uri, payload):
    from transfuse.fusion.members import load_member

    canary = tmp_path / "pwned"
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("attacker", (tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    config = payload.replace("PWNED", str(canary)) + "\ndata: {image_size: 32, channels: 3, mean: [0.5], std: [0.5]}\n"
    client.log_text(run.info.run_id, config, "config.yaml")
    client.set_terminated(run.info.run_id, "FINISHED")
    with pytest.raises(FusionError, match=r"is not a transfuse backbone or head"):
        load_member(client, client.get_run(run.info.run_id), ["a", "b"])
    assert not canary.exists()


def test_several_methods_in_one_job_share_one_pass_and_log_a_run_each(zoo, monkeypatch):
    """fusion_method=[a,b,c]: the members run over the data once, and each method is its own tracked run
    with the same numbers as when it runs alone."""
    from transfuse.fusion.pool import Pool

    passes = []
    original = Pool.predict.__func__

    def counting(cls, members, images, labels, source=None):
        passes.append(len(members))
        return original(cls, members, images, labels, source)

    monkeypatch.setattr(Pool, "predict", classmethod(counting))
    _, best = _fuse(zoo, "fusion_method=[logit_mean,vote,greedy_soup]", "logger.experiment_name=many")
    assert passes == [2]  # one pass of the two members for three methods
    client = MlflowClient(zoo[1])
    runs = client.search_runs([client.get_experiment_by_name("many").experiment_id])
    by_method = {r.data.tags["method"]: r for r in runs}
    assert sorted(by_method) == ["greedy_soup", "logit_mean", "vote"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["config_hash"] for r in runs}) == 3
    assert len({r.data.tags["recipe_hash"] for r in runs}) == 3  # each method is its own recipe, not seeds of one
    assert best["val/acc"] == max(r.data.metrics["val/acc"] for r in runs)
    _, alone = _fuse(zoo, "fusion_method=vote", "logger.experiment_name=alone")
    assert alone["test/acc"] == by_method["vote"].data.metrics["test/acc"]
    assert alone["val/acc"] == by_method["vote"].data.metrics["val/acc"]
