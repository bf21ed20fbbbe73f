"""Run figures: the test summary's counts, the PNGs themselves, and their upload under ``plots/``."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_calibration_error, multiclass_confusion_matrix

from tests.conftest import FAST, png_size
from transfuse.finetune import Full
from transfuse.models.classifier import ImageClassifier
from transfuse.models.summary import PredictionSummary, summarise_predictions
from transfuse.plotting import DPI, save_png
from transfuse.plotting import run as figures
from transfuse.tracking.artifacts import CURVE_KEYS, epoch_curves
from transfuse.train import train

PLOTS = {"plots/learning_curves.png", "plots/confusion_matrix.png", "plots/reliability_diagram.png"}

# Six predictions over three classes, as probabilities (logits are their logarithms), with four bins of
# confidence [0, .25) [.25, .5) [.5, .75) [.75, 1]. The last one's softmax confidence rounds to exactly 1.
PROBABILITIES = [
    [0.7, 0.2, 0.1],  # true 0, predicted 0 at .7: bin 2, right
    [0.1, 0.8, 0.1],  # true 2, predicted 1 at .8: bin 3, wrong
    [0.3, 0.3, 0.4],  # true 2, predicted 2 at .4: bin 1, right
    [0.05, 0.05, 0.9],  # true 2, predicted 2 at .9: bin 3, right
    [0.2, 0.6, 0.2],  # true 0, predicted 1 at .6: bin 2, wrong
]
LOGITS = torch.cat([torch.tensor(PROBABILITIES).log(), torch.tensor([[40.0, 0.0, 0.0]])])  # true 0, right, bin 3
LABELS = torch.tensor([0, 2, 2, 2, 0, 0])
CONFUSION = [[2, 1, 0], [0, 0, 0], [0, 1, 2]]
BIN_COUNT, BIN_CORRECT, BIN_CONFIDENCE = [0, 1, 2, 3], [0, 1, 1, 2], [0.0, 0.4, 1.3, 2.7]


def _check_summary(summary: PredictionSummary) -> None:
    assert summary.confusion.tolist() == CONFUSION
    assert summary.bin_count.tolist() == BIN_COUNT
    assert summary.bin_correct.tolist() == BIN_CORRECT
    assert summary.bin_confidence.tolist() == pytest.approx(BIN_CONFIDENCE, abs=1e-5)
    assert summary.total == 6 and summary.accuracy == pytest.approx(4 / 6)
    assert summary.ece == pytest.approx((0.6 + 0.3 + 0.7) / 6, abs=1e-5)


def test_summary_of_a_hand_made_batch():
    _check_summary(summarise_predictions(LOGITS, LABELS, num_classes=3, n_bins=4))


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_summary_agrees_with_torchmetrics(n_bins):
    generator = torch.Generator().manual_seed(n_bins)
    logits = torch.randn(200, 7, generator=generator) * 3
    labels = torch.randint(0, 7, (200,), generator=generator)
    summary = summarise_predictions(logits, labels, num_classes=7, n_bins=n_bins)
    assert torch.equal(summary.confusion, multiclass_confusion_matrix(logits, labels, 7))
    assert summary.ece == pytest.approx(float(multiclass_calibration_error(logits, labels, 7, n_bins)), abs=1e-6)
    assert summary.total == 200 and len(summary.bin_count) == n_bins


class _KeepAsIs(Full):
    """No freezing: the Identity backbone below has no timm blocks."""

    def apply(self, model: ImageClassifier) -> None:
        pass


def _test_pass(model: ImageClassifier, logits: torch.Tensor, labels: torch.Tensor) -> PredictionSummary | None:
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, DataLoader(TensorDataset(logits, labels), batch_size=4), verbose=False)
    return model.test_summary


def test_classifier_accumulates_each_test_pass_on_its_own():
    # Identity backbone and head: the "images" are the logits themselves
    model = ImageClassifier(
        nn.Identity(),
        nn.Identity(),
        optimizer=torch.optim.SGD,
        finetune=_KeepAsIs(),
        class_names=["a", "b", "c"],
        ece_bins=4,
    )
    assert model.test_summary is None
    _check_summary(_test_pass(model, LOGITS, LABELS))  # two batches, summed
    second = _test_pass(model, LOGITS[:1], LABELS[:1])  # a new pass starts from zero
    assert second.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert second.bin_count.tolist() == [0, 0, 1, 0]


def _pixels(inches: tuple[float, float]) -> tuple[int, int]:
    return round(inches[0] * DPI), round(inches[1] * DPI)


SUMMARY = summarise_predictions(LOGITS, LABELS, num_classes=3, n_bins=4)
FIGURES = {
    "curves": (
        lambda: figures.learning_curves({"train": [(1, 1.2), (2, 0.8)], "val": [(1, 1.3), (2, 1.0)]}, {"val": []}),
        figures.CURVES_SIZE,
    ),
    "confusion": (lambda: figures.confusion_matrix(SUMMARY.confusion, ["a", "b", "c"]), figures.confusion_size(3)),
    "confusion_30_classes": (
        lambda: figures.confusion_matrix(torch.eye(30, dtype=torch.long) * 5, [f"class {i}" for i in range(30)]),
        figures.confusion_size(30),
    ),
    "reliability": (
        lambda: figures.reliability_diagram(SUMMARY.bin_count, SUMMARY.bin_confidence, SUMMARY.bin_correct),
        figures.RELIABILITY_SIZE,
    ),
}


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_pngs_of_their_nominal_size(name, tmp_path):
    draw, inches = FIGURES[name]
    figure = draw()
    assert tuple(figure.get_size_inches()) == pytest.approx(inches)
    assert png_size(save_png(figure, tmp_path / f"{name}.png")) == _pixels(inches)


def test_confusion_matrix_checks_its_labels():
    with pytest.raises(ValueError, match="square matrix over 2 classes"):
        figures.confusion_matrix(SUMMARY.confusion, ["a", "b"])


def _last_run(client: MlflowClient, cfg):
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


def _plots(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, "plots")}


def test_runs_log_their_plots_unless_switched_off(make_config, tmp_path):
    cfg = make_config(*FAST)
    train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    run = _last_run(client, cfg)
    assert _plots(client, run.info.run_id) == PLOTS
    folder = Path(client.download_artifacts(run.info.run_id, "plots", str(tmp_path / "download")))
    assert png_size(folder / "learning_curves.png") == _pixels(figures.CURVES_SIZE)
    assert png_size(folder / "confusion_matrix.png") == _pixels(figures.confusion_size(cfg.data.num_classes))
    assert png_size(folder / "reliability_diagram.png") == _pixels(figures.RELIABILITY_SIZE)
    # the curves hold one point per epoch: the values logged at the end of each
    curves = {panel: epoch_curves(client, run.info.run_id, lines) for panel, lines in CURVE_KEYS.items()}
    for panel, key in (("loss", "train/loss_epoch"), ("loss", "val/loss"), ("accuracy", "val/acc")):
        history = client.get_metric_history(run.info.run_id, key)
        line = curves[panel][key.split("/")[0]]
        assert line == [(epoch, pytest.approx(m.value)) for epoch, m in enumerate(history, 1)], key
    assert [epoch for epoch, _ in curves["accuracy"]["train"]] == [1, 2]

    # an evaluation has test figures but no history to draw curves from
    evaluation = make_config(*FAST, "stage=evaluate", f"init.weights=runs:/{run.info.run_id}")
    train(evaluation)
    assert _plots(client, _last_run(client, evaluation).info.run_id) == PLOTS - {"plots/learning_curves.png"}

    quiet = make_config(*FAST, "trainer.max_epochs=1", "logger.plots=false")
    metrics = train(quiet)
    assert not _plots(client, _last_run(client, quiet).info.run_id)
    assert not math.isnan(metrics["test/acc"])
