"""Pruning (stage=compress): exact sparsity by hand, and real runs whose pruned checkpoints reload."""

from __future__ import annotations

import re

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from tests.conftest import FAST
from transfuse import weights
from transfuse.compress import ChannelPruning, MagnitudePruning, magnitude_prune, prunable_weights, sparsity
from transfuse.errors import ConfigError, WeightsError
from transfuse.models.build import build_model
from transfuse.models.summary import count_flops
from transfuse.sweeps import input_error
from transfuse.train import train
from transfuse.weights import read_file


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_pruning_reaches_the_requested_sparsity_exactly(ratio):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weights = [m.weight for m, _ in prunable_weights(net).values()]
    n = sum(w.numel() for w in weights)
    smallest = torch.cat([w.detach().abs().flatten() for w in weights]).sort().values
    masks = magnitude_prune(net, ratio)
    assert sum(int((w == 0).sum()) for w in weights) == round(ratio * n)
    assert sparsity(net) == round(ratio * n) / n
    assert sum(int((1 - m).sum()) for m in masks.values()) == round(ratio * n)
    # global: every kept weight is at least as large as every pruned one
    kept = torch.cat([w.detach().abs().flatten()[w.flatten() != 0] for w in weights])
    if ratio:
        assert kept.min() >= smallest[round(ratio * n) - 1]
    # permanent, with the model's own tensor names; biases and BatchNorm untouched
    assert net.state_dict().keys() == before.keys()
    for key in ("0.bias", "1.weight", "1.running_mean", "4.bias"):
        assert torch.equal(net.state_dict()[key], before[key])


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half"])
def test_a_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"compress.ratio must be in \[0, 1\)"):
        MagnitudePruning(ratio)


@pytest.fixture
def source(make_config):
    cfg = make_config(*FAST)
    train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])[0]
    return client, run


def _latest(client, name="transfuse"):
    return client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], order_by=["attributes.start_time DESC"]
    )[0]


def test_a_pruned_run_logs_its_sparsity_and_its_checkpoint_reloads(source, make_config, tmp_path):
    client, run = source
    pruned = ["stage=compress", "compress=magnitude", "compress.ratio=0.6", f"init.weights=runs:/{run.info.run_id}"]
    metrics = train(make_config(*FAST, *pruned))
    compressed = _latest(client)
    assert compressed.info.status == "FINISHED" and compressed.data.tags["stage"] == "compress"
    assert compressed.data.metrics["cost/nonzero_params"] < 0.5 * compressed.data.metrics["cost/params"]
    state, _ = read_file(client.download_artifacts(compressed.info.run_id, "checkpoints/best.ckpt", str(tmp_path)))
    model = build_model(make_config(*FAST), ["disk", "square", "triangle", "cross"])
    model.load_state_dict(state, strict=False)
    assert sparsity(model) == pytest.approx(0.6, abs=1e-4)
    # evaluating the saved checkpoint reproduces the compressed run's test accuracy
    evaluated = train(make_config(*FAST, "stage=evaluate", f"init.weights=runs:/{compressed.info.run_id}"))
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    # fine-tuned after pruning, the pruned weights stay zero
    train(make_config(*FAST, *pruned, "stage.fit=true", "trainer.max_epochs=1"))
    tuned = _latest(client)
    state, _ = read_file(client.download_artifacts(tuned.info.run_id, "checkpoints/best.ckpt", str(tmp_path / "t")))
    model.load_state_dict(state, strict=False)
    assert sparsity(model) == pytest.approx(0.6, abs=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["compress=magnitude", "compress.ratio=1.0"], r"compress.ratio must be in \[0, 1\)"),
        ([], "stage=compress and compress=<method>"),
    ],
)
def test_bad_compress_settings_fail_before_any_run(make_config, overrides, message):
    cfg = make_config(*FAST, "stage=compress", "init.weights=runs:/abc", *overrides)
    with pytest.raises(Exception) as info:  # a constructor's error comes wrapped by instantiate
        train(cfg)
    error = input_error(info.value)
    assert isinstance(error, ConfigError) and re.search(message, str(error))
    assert MlflowClient(cfg.logger.tracking_uri).get_experiment_by_name(cfg.logger.experiment_name) is None


def test_a_channel_pruned_resnet_is_smaller_runs_and_reloads_with_the_same_outputs(make_config, tmp_path):
    cfg = make_config(*FAST)
    classes = ["disk", "square", "triangle", "cross"]
    model = build_model(cfg, classes).eval()
    x = torch.randn(4, 3, 32, 32)
    network = lambda m: lambda images: m.head(m.backbone(images))  # noqa: E731
    flops_before, params_before = count_flops(network(model), x), sum(p.numel() for p in model.parameters())
    ChannelPruning(0.5).apply(model, x)
    model.eval()
    assert count_flops(network(model), x) < 0.5 * flops_before
    assert sum(p.numel() for p in model.parameters()) < 0.5 * params_before
    with torch.no_grad():
        pruned = network(model)(x)
    assert pruned.shape == (4, 4)
    checkpoint = {"state_dict": model.state_dict(), "transfuse": {}}
    model.on_save_checkpoint(checkpoint)  # what every Lightning checkpoint of the model records
    assert checkpoint["transfuse"]["architecture"] == "channel_pruned"
    torch.save(checkpoint, tmp_path / "pruned.ckpt")
    fresh = build_model(cfg, classes)
    weights.load_into(fresh, weights.resolve(str(tmp_path / "pruned.ckpt"), None, fresh.backbone), classes, "error")
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(fresh)(x), pruned, rtol=0, atol=0)
    # the same checkpoint without its architecture record: a clear refusal, for evaluation and for fine-tuning
    del checkpoint["transfuse"]["architecture"]
    torch.save(checkpoint, tmp_path / "unrecorded.ckpt")
    for on_mismatch, where in (("error", "its classifier does not fit"), ("reinit", "does not fit the model")):
        fresh = build_model(cfg, classes)
        spec = weights.resolve(str(tmp_path / "unrecorded.ckpt"), None, fresh.backbone)
        with pytest.raises(WeightsError, match=f"{where} .*is it channel-pruned without its architecture record"):
            weights.load_into(fresh, spec, classes, on_mismatch)


def test_a_channel_pruned_run_reloads_for_evaluation(make_config, source):
    client, run = source
    pruned = ["stage=compress", "compress=channel", "compress.ratio=0.5", f"init.weights=runs:/{run.info.run_id}"]
    metrics = train(make_config(*FAST, *pruned))
    compressed = _latest(client)
    assert compressed.data.metrics["cost/params"] < 0.5 * run.data.metrics["cost/params"]
    assert compressed.data.metrics["cost/flops"] < 0.5 * run.data.metrics["cost/flops"]
    evaluated = train(make_config(*FAST, "stage=evaluate", f"init.weights=runs:/{compressed.info.run_id}"))
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
