"""deterministic=true: the same tiny fit twice gives bit-identical weights and metrics."""

from __future__ import annotations

import torch
from mlflow import MlflowClient

from tests.conftest import FAST, compose_config
from transfuse.train import train

#: augmentation on and two epochs: the random crops, the shuffling and dropout-free SGD steps must all repeat
OVERRIDES = [*FAST, "deterministic=true", "data/augment=digits", "logger.experiment_name=twice", "test_last=false"]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_the_same_fit_twice_is_bit_identical(tmp_path, tracking_uri):
    outputs = []
    for launch in ("first", "second"):
        cfg = compose_config([*OVERRIDES, f"logger.tracking_uri={tracking_uri}"], tmp_path / launch)
        assert cfg.trainer.deterministic is True
        train(cfg)
        outputs.append(tmp_path / launch / "out" / "checkpoints" / "last.ckpt")
    first, second = (weights(path) for path in outputs)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("twice").experiment_id], order_by=["start_time"])
    assert len(runs) == 2
    for key in ("train/loss_step", "val/loss", "val/acc", "test/acc", "test/loss"):
        a, b = ([(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)] for r in runs)
        assert a and a == b, key
