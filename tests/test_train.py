"""A real fit through the whole flow, read back from MLflow; weight sources and failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from mlflow import MlflowClient

from tests.conftest import FAST
from transfuse import weights
from transfuse.errors import ConfigError, WeightsError
from transfuse.models.build import build_model
from transfuse.models.summary import count_flops
from transfuse.train import train
from transfuse.weights import read_file


def _context(given):
    return {tag.key: tag.value for tag in given.tags}["mlflow.data.context"]


def _runs(cfg):
    client = MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture
def pretrained(make_config):
    """One real pretraining run on synthetic shapes; returns its config and MLflow run."""
    cfg = make_config(*FAST)
    metrics = train(cfg)
    client, runs = _runs(cfg)
    assert len(runs) == 1
    return cfg, runs[0], metrics, client


def test_pretrain_run_is_fully_tracked(pretrained, tmp_path):
    cfg, run, metrics, client = pretrained
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "2"
    assert run.data.params["backbone.name"] == "test_resnet"
    assert run.data.tags["stage"] == "pretrain" and run.data.tags["data"] == "synthetic"
    assert run.data.tags["backbone"] == "test_resnet" and "command" in run.data.tags
    for key in (
        "train/loss_epoch",
        "val/acc",
        "val/f1",
        "val/ece",
        "test/acc",
        "test/f1",
        "test/ece",
        "val/acc_best",
        "time/fit_s",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    # the cost of the tested network, at the data's input size (3 x 32 x 32)
    model = build_model(cfg, ["disk", "square", "triangle", "cross"]).eval()
    params = sum(p.numel() for p in model.parameters())
    assert run.data.metrics["cost/params"] == params and 0 < run.data.metrics["cost/nonzero_params"] <= params
    flops = count_flops(lambda x: model.head(model.backbone(x)), torch.zeros(1, 3, 32, 32))
    assert run.data.metrics["cost/flops"] == pytest.approx(flops)
    assert run.data.metrics["cost/checkpoint_mb"] == pytest.approx(4 * params / 1e6, rel=0.2)
    assert run.data.metrics["cost/latency_ms_b1"] > 0 and run.data.metrics["cost/latency_ms_b8"] > 0
    # one val/acc point per epoch
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints"} <= artifacts
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # the local copies went when the run finished
    # last.ckpt is the state at the end of fit, whichever epoch was best
    last = torch.load(
        client.download_artifacts(run.info.run_id, "checkpoints/last.ckpt", str(tmp_path / "last")), weights_only=False
    )
    datamodule = instantiate(cfg.data)
    steps = math.ceil(len(datamodule.splits["train"]) / cfg.data.batch_size) * cfg.trainer.max_epochs
    assert last["global_step"] == steps
    assert "optimizer_states" not in last  # last_checkpoint=weights by default
    # artifacts sit beside the store, not in the directory the command ran in
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert not (Path.cwd() / "mlruns").exists()
    config_text = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    with open(config_text) as handle:
        assert "name: test_resnet" in handle.read()


def _finetune_matches_source(make_config, client, run, weights_spec, tmp_path):
    cfg = make_config(*FAST, "data=synthetic_target", "stage=finetune", f"init.weights={weights_spec}")
    saved, _ = read_file(client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path)))
    model = build_model(cfg, ["disk", "square", "triangle", "cross"])
    source = weights.resolve(cfg.init.weights, client, model.backbone)
    assert source.run_id == run.info.run_id
    weights.load_into(model, source, ["disk", "square", "triangle", "cross"])
    loaded = model.state_dict()
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)
    return cfg


def test_finetune_by_run_id_starts_from_saved_weights(pretrained, make_config, tmp_path):
    _, run, _, client = pretrained
    _finetune_matches_source(make_config, client, run, f"runs:/{run.info.run_id}", tmp_path)


def test_finetune_by_query_starts_from_saved_weights_and_links_lineage(pretrained, make_config, tmp_path):
    _, run, _, client = pretrained
    query = "\"tags.stage = 'pretrain' and tags.data = 'synthetic'\""
    cfg = _finetune_matches_source(make_config, client, run, query, tmp_path)
    train(cfg)
    _, runs = _runs(cfg)
    finetune = runs[-1]
    assert finetune.info.status == "FINISHED"
    assert finetune.data.tags["source_run_id"] == run.info.run_id
    assert finetune.data.tags["stage"] == "finetune"
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert f"]({page})" in finetune.data.tags["mlflow.note.content"]  # opens the model-training view
    # the UI's Datasets column: the fine-tune's own data, and the source run's data it copies
    (pretrained_data,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    datasets = {_context(d): d.dataset for d in finetune.inputs.dataset_inputs}
    assert sorted(datasets) == ["source", "train"] and _context(pretrained_data) == "train"
    assert datasets["source"].name == "synthetic" and datasets["train"].name == "synthetic_target"
    assert datasets["source"].digest == pretrained_data.dataset.digest
    assert datasets["train"].digest != datasets["source"].digest
    splits = instantiate(cfg.data).splits
    profile = json.loads(datasets["train"].profile)
    assert profile["splits"] == {name: len(part) for name, part in splits.items()} and profile["num_classes"] == 4


def test_unknown_run_id_fails_clearly_before_any_run(make_config):
    # weights are resolved before the MLflow run opens: a wrong source leaves nothing in the store
    cfg = make_config(*FAST, "stage=finetune", "init.weights=runs:/0123456789abcdef")
    with pytest.raises(WeightsError, match="no MLflow run with id '0123456789abcdef'"):
        train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    assert client.get_experiment_by_name(cfg.logger.experiment_name) is None


def test_runs_path_leaving_the_run_is_refused(make_config):
    cfg = make_config(*FAST, "stage=finetune", "init.weights=runs:/0123456789abcdef/../../other/best.ckpt")
    with pytest.raises(WeightsError, match="not runs:/<run id>/<artifact path inside that run>"):
        train(cfg)


def test_query_matching_nothing_fails_clearly(make_config):
    cfg = make_config(*FAST, "stage=finetune", "init.weights=\"tags.stage = 'nothing-like-this'\"")
    with pytest.raises(WeightsError, match="no FINISHED run matches"):
        train(cfg)


def test_finetune_without_weights_is_refused_before_any_run(make_config):
    cfg = make_config(*FAST, "stage=finetune")
    with pytest.raises(ConfigError, match=r"needs init\.weights"):
        train(cfg)


def test_evaluate_reproduces_the_test_accuracy_of_the_source_run(pretrained, make_config):
    _, run, _, client = pretrained
    cfg = make_config(*FAST, "stage=evaluate", f"init.weights=runs:/{run.info.run_id}")
    metrics = train(cfg)
    # same data, same split, the same best checkpoint: the same test accuracy, and no training
    assert metrics["test/acc"] == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)
    _, runs = _runs(cfg)
    evaluation = runs[-1]
    assert evaluation.data.tags["stage"] == "evaluate"
    assert "train/loss_epoch" not in evaluation.data.metrics
    # it also scores the source for this target, with the source head (same classes) for LEEP
    assert evaluation.data.metrics["transfer/leep"] <= 0.0
    assert metrics["transfer/logme"] == pytest.approx(evaluation.data.metrics["transfer/logme"])
    assert not client.list_artifacts(evaluation.info.run_id, "checkpoints")
    # an evaluation has no checkpoint of its own, so it cannot be a source
    cfg = make_config(*FAST, "stage=finetune", f"init.weights=runs:/{evaluation.info.run_id}")
    with pytest.raises(WeightsError, match=r"has no artifact 'checkpoints/best\.ckpt'"):
        train(cfg)


def test_last_epoch_weights_are_tested_as_test_last(pretrained, make_config):
    _, run, metrics, _ = pretrained
    logged = run.data.metrics
    assert {"test_last/acc", "test_last/f1", "test_last/ece"} <= set(logged)
    assert metrics["test_last/acc"] == pytest.approx(logged["test_last/acc"])
    cfg = make_config(*FAST, "stage=evaluate", f"init.weights=runs:/{run.info.run_id}/checkpoints/last.ckpt")
    # the uploaded last-epoch weights, tested on their own, give what the run logged as test_last/*
    assert train(cfg)["test/acc"] == pytest.approx(logged["test_last/acc"], abs=1e-6)
    quiet = train(make_config(*FAST, "trainer.max_epochs=1", "test_last=false"))
    assert not any(key.startswith("test_last/") for key in quiet)


def test_score_ranks_a_source_for_other_classes_without_training(pretrained, make_config):
    _, run, _, _ = pretrained
    cfg = make_config(*FAST, "data.num_classes=3", "stage=score", f"init.weights=runs:/{run.info.run_id}")
    metrics = train(cfg)
    _, runs = _runs(cfg)
    scored = runs[-1]
    assert scored.data.tags["init.head_reinitialised"] == "true"
    assert "transfer/logme" in scored.data.metrics and "transfer/leep" not in scored.data.metrics
    assert "test/acc" not in scored.data.metrics and "train/loss_epoch" not in scored.data.metrics
    assert metrics["transfer/logme"] == pytest.approx(scored.data.metrics["transfer/logme"])


def test_evaluate_on_other_classes_is_refused(pretrained, make_config):
    _, run, _, _ = pretrained
    cfg = make_config(*FAST, "data.num_classes=3", "stage=evaluate", f"init.weights=runs:/{run.info.run_id}")
    with pytest.raises(WeightsError, match="cannot be evaluated here"):
        train(cfg)


def test_linear_probe_trains_only_the_head(pretrained, make_config, tmp_path):
    _, run, _, client = pretrained
    cfg = make_config(*FAST, "stage=finetune", "finetune=linear_probe", f"init.weights=runs:/{run.info.run_id}")
    train(cfg)
    _, runs = _runs(cfg)
    source, _ = read_file(client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path / "a")))
    probed, _ = read_file(client.download_artifacts(runs[-1].info.run_id, "checkpoints/last.ckpt", str(tmp_path / "b")))
    backbone = [k for k in source if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone), "BatchNorm statistics must be checked too"
    for key in backbone:
        torch.testing.assert_close(probed[key], source[key], rtol=0, atol=0)
    assert not torch.equal(probed["head.fc.weight"], source["head.fc.weight"])


class Boom(Callback):
    """Fails in the middle of the first epoch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("boom in the middle of fit")


def test_full_last_checkpoint_keeps_the_optimiser_and_none_uploads_only_best(make_config, tmp_path):
    cfg = make_config(*FAST, "last_checkpoint=full", "trainer.max_epochs=1")
    train(cfg)
    client, runs = _runs(cfg)
    last = client.download_artifacts(runs[-1].info.run_id, "checkpoints/last.ckpt", str(tmp_path / "full"))
    assert "optimizer_states" in torch.load(last, weights_only=False)
    cfg = make_config(*FAST, "last_checkpoint=none", "trainer.max_epochs=1")
    train(cfg)
    _, runs = _runs(cfg)
    assert {a.path for a in client.list_artifacts(runs[-1].info.run_id, "checkpoints")} == {"checkpoints/best.ckpt"}


def test_exception_mid_fit_leaves_the_run_failed(make_config):
    cfg = make_config(*FAST, "+callbacks.boom._target_=tests.test_train.Boom")
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    _, runs = _runs(cfg)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["error"] == "RuntimeError: boom in the middle of fit"
    assert runs[0].info.end_time is not None


def test_evaluate_with_adabn_tests_the_source_with_target_statistics(pretrained, make_config):
    _, run, _, client = pretrained
    target = ["data=synthetic_target", "data.per_class=24", "data.batch_size=512"]  # one batch: order-free stats
    common = [*FAST, *target, "stage=evaluate", f"init.weights=runs:/{run.info.run_id}"]
    plain = train(make_config(*common))
    adapted = train(make_config(*common, "finetune.bn=adabn"))
    # by hand: the source weights, BatchNorm statistics of the target training images, then the test split
    cfg = make_config(*common)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule.class_names)
    weights.load_into(model, weights.resolve(f"runs:/{run.info.run_id}", client, model.backbone), model.class_names)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model.backbone(datamodule.transform(datamodule.splits["train"].images, train=False))
        model.eval()
        test = datamodule.splits["test"]
        logits = model(datamodule.transform(test.images, train=False))
    expected_loss = torch.nn.functional.cross_entropy(logits, test.labels).item()
    expected_acc = (logits.argmax(1) == test.labels).float().mean().item()
    assert adapted["test/loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert adapted["test/acc"] == pytest.approx(expected_acc)
    assert adapted["test/loss"] != pytest.approx(plain["test/loss"], rel=1e-3)
