"""stage=adapt end to end: a real fit on synthetic shapes, read back from MLflow; target labels unused."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient

from tests.conftest import FAST
from transfuse.models.build import build_model
from transfuse.train import train

ADAPT = [*FAST, "stage=adapt", "data@target_data=synthetic_target", "data.per_class=24", "target_data.per_class=24"]


@pytest.mark.parametrize("method", ["dann", "coral", "mmd", "source_only"])
def test_adapt_run_logs_alignment_and_domain_gap(make_config, method):
    cfg = make_config(*ADAPT, f"adapt={method}")
    metrics = train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "adapt" and run.data.tags["adapt"] == method
    assert run.data.tags["target_data"] == "synthetic_target" and run.data.tags["selection"] == "source_val"
    logged = ("train/align_loss", "val/acc", "val_target/acc", "test/acc", "test_source/acc")
    for key in (*logged, "test_last/acc", "test_last_source/acc"):
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["val/proxy_a_distance"] <= 2.0
    if method == "source_only":  # the baseline: same pipeline, no alignment term
        assert run.data.metrics["train/align_loss"] == 0.0
    else:
        assert run.data.metrics["train/align_loss"] != 0.0
    assert metrics["test/acc"] == pytest.approx(run.data.metrics["test/acc"])
    # adaptation runs draw their figures too (from the target test split)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/confusion_matrix.png"}
    # both domains are the run's datasets: the labelled one it trains on, the unlabelled target
    inputs = {{t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset for d in run.inputs.dataset_inputs}
    assert {k: d.name for k, d in inputs.items()} == {"train": "synthetic", "target": "synthetic_target"}


def test_target_oracle_selection_is_tagged(make_config):
    cfg = make_config(*ADAPT, "monitor=val_target/acc")
    assert cfg.tags.selection == "target_oracle"


def _fit_weights(cfg, scramble: bool) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    datamodule = instantiate(cfg.datamodule)
    if scramble:
        labels = datamodule.target.splits["train"].labels
        datamodule.target.splits["train"].labels = labels[torch.randperm(len(labels))]
    L.seed_everything(0)
    model = build_model(cfg, datamodule.class_names)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0
    )
    trainer.fit(model, datamodule=datamodule)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_target_labels_never_reach_training(make_config):
    cfg = make_config(*ADAPT, "adapt=dann")
    plain, scrambled = _fit_weights(cfg, scramble=False), _fit_weights(cfg, scramble=True)
    start = build_model(cfg, ["disk", "square", "triangle", "cross"]).state_dict()
    assert any(not torch.equal(plain[k], start[k]) for k in plain)  # training did change the weights
    for key in plain:
        assert torch.equal(plain[key], scrambled[key]), key
