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
    # the first launch deletes its local checkpoints once its run holds them (the default), the second keeps them
    for launch, keep in (("first", "false"), ("second", "true")):
        overrides = [*OVERRIDES, f"logger.tracking_uri={tracking_uri}", f"checkpoint.keep_local={keep}"]
        cfg = compose_config(overrides, tmp_path / launch)
        assert cfg.trainer.deterministic is True
        train(cfg)
    assert not (tmp_path / "first" / "out" / "checkpoints").exists()
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("twice").experiment_id], order_by=["start_time"])
    assert len(runs) == 2
    stored = client.download_artifacts(runs[0].info.run_id, "checkpoints/last.ckpt", str(tmp_path))
    first, second = weights(stored), weights(tmp_path / "second" / "out" / "checkpoints" / "last.ckpt")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    for key in ("train/loss_step", "val/loss", "val/acc", "test/acc", "test/loss"):
        a, b = ([(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)] for r in runs)
        assert a and a == b, key
