"""What a run uploads besides metrics: checkpoints, weights made outside Lightning, and figures.

Figures are drawn from the run's own metric history and from a :class:`PredictionSummary` of plain counts, so
this module needs no model: it records values, it does not know how they were made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from transfuse.errors import ConfigError

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

    from transfuse.models.summary import PredictionSummary
    from transfuse.tracking.logger import RunLogger
    from transfuse.tracking.run import TrackedRun

#: lines of ``plots/learning_curves.png``: panel -> line -> metric keys, of which the first one logged is drawn
CURVE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "loss": {"train": ("train/loss_epoch", "train/loss"), "val": ("val/loss",)},
    "accuracy": {"train": ("train/acc",), "val": ("val/acc",)},
}


#: where a run's served model lives, and the tag that names its MLflow model (``models:/<id>``)
MODEL_NAME, MODEL_TAG = "model", "model_id"


def log_model(run: TrackedRun, model: torch.nn.Module, example: torch.Tensor) -> str:
    """Log ``model`` (pixels in, logits out) as the run's MLflow model, with ``example`` as its input example and
    signature, and transfuse's own code beside it so it loads where transfuse is not installed. Returns its
    ``models:/`` URI, also tagged on the run (``model_id``) for ``transfuse-runs register``."""
    if not run.is_writer:
        return ""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    import transfuse
    from transfuse.tracking.environment import distributions

    with torch.no_grad():
        logits = model(example)
    pins = {line.split("==")[0]: line for line in distributions()}
    mlflow.set_tracking_uri(run.client.tracking_uri)
    mlflow.set_experiment(experiment_id=run.experiment_id)  # the model's own entity lives in the run's experiment
    info = mlflow.pytorch.log_model(
        model,
        name=MODEL_NAME,
        run_id=run.run_id,
        input_example=example.numpy(),
        signature=infer_signature(example.numpy(), logits.numpy()),
        pip_requirements=[pins[name] for name in ("torch", "timm") if name in pins],  # no slow inference
        code_paths=[str(Path(transfuse.__file__).parent)],
    )
    run.client.set_tag(run.run_id, MODEL_TAG, info.model_id)
    return info.model_uri


def log_state_dict(
    run: TrackedRun, state: Mapping[str, Any], class_names: Sequence[str], name: str = "best.ckpt"
) -> None:
    """Upload weights made outside Lightning (a soup) as ``checkpoints/<name>``, readable by ``init.weights``."""
    with tempfile.TemporaryDirectory() as staging:
        torch.save({"state_dict": dict(state), "transfuse": {"class_names": list(class_names)}}, Path(staging) / name)
        run.client.log_artifacts(run.run_id, staging, "checkpoints")


def log_checkpoints(run: TrackedRun, trainer: Trainer, last: Path, last_mode: str = "weights") -> None:
    """Upload the best checkpoint and the final state as ``checkpoints/best.ckpt`` and ``checkpoints/last.ckpt``.

    The last checkpoint is written here rather than by ``ModelCheckpoint(save_last=True)``, which in
    Lightning 2.6 only refreshes it in epochs that also produced a new best checkpoint. ``last_mode`` is
    ``full`` (with optimiser state, to resume), ``weights`` or ``none``.
    """
    if last_mode not in ("full", "weights", "none"):
        raise ConfigError(f"last_checkpoint must be full, weights or none, got {last_mode!r}")
    callback = trainer.checkpoint_callback
    staged = {"best.ckpt": callback.best_model_path if callback is not None else ""}
    if last_mode != "none":
        last.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(last, weights_only=last_mode == "weights")
        staged["last.ckpt"] = str(last)  # saved by every process of a DDP job (a collective call), written by rank 0
    if not run.is_writer:
        return
    with tempfile.TemporaryDirectory() as staging:
        for name, path in staged.items():
            if path:
                _link_or_copy(Path(path), Path(staging) / name)
        run.client.log_artifacts(run.run_id, staging, "checkpoints")
    if callback is not None and callback.best_model_score is not None:
        run.client.log_metric(run.run_id, f"{callback.monitor}_best", float(callback.best_model_score))


def log_plots(
    run: TrackedRun,
    summary: PredictionSummary | None,
    class_names: Sequence[str],
    logger: RunLogger | None = None,
    curves: bool = True,
) -> list[str]:
    """Upload the run's figures as PNGs under ``plots/``.

    ``learning_curves.png`` is drawn from the run's metric history (none without one, e.g. an evaluation);
    ``confusion_matrix.png`` and ``reliability_diagram.png`` from ``summary`` (none without a test pass).

    Args:
        summary: the model's ``test_summary`` after the test pass to show.
        class_names: the confusion matrix's axis labels.
        logger: the run's Lightning logger, flushed first so that the history is complete.
        curves: False where the run trained nothing (a fusion's one ``val/acc`` is not a curve).

    Returns:
        The names of the files uploaded.
    """
    if not run.is_writer:
        return []
    from transfuse.plotting import run as figures
    from transfuse.plotting import save_png

    if logger is not None:
        logger.flush()
    run.sender.drain()  # the history drawn is complete
    drawn = {}
    history = {panel: epoch_curves(run.client, run.run_id, lines) for panel, lines in CURVE_KEYS.items()}
    if curves and any(points for panel in history.values() for points in panel.values()):
        drawn["learning_curves.png"] = figures.learning_curves(history["loss"], history["accuracy"])
    if summary is not None and summary.total:
        drawn["confusion_matrix.png"] = figures.confusion_matrix(summary.confusion, class_names)
        drawn["reliability_diagram.png"] = figures.reliability_diagram(
            summary.bin_count, summary.bin_confidence, summary.bin_correct
        )
    if drawn:
        with tempfile.TemporaryDirectory() as staging:
            for name, figure in drawn.items():
                save_png(figure, Path(staging) / name)
            run.client.log_artifacts(run.run_id, staging, "plots")
    return sorted(drawn)


def epoch_curves(
    client: MlflowClient, run_id: str, lines: Mapping[str, Sequence[str]]
) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch metric histories of a run, ``{line: [(epoch, value), ...]}`` with epochs counted from 1.

    Each line reads the first of its keys that has a history (an empty list if none does). Lightning logs
    metrics at the global step, with an ``epoch`` metric beside them that turns steps into epochs; should two
    epochs share a step, it goes to the earlier one, whose end-of-epoch metrics are logged there. Without an
    ``epoch`` history, points are numbered in order.
    """
    epoch_at: dict[int, int] = {}
    for point in client.get_metric_history(run_id, "epoch"):
        epoch_at[point.step] = min(int(point.value), epoch_at.get(point.step, int(point.value)))
    curves: dict[str, list[tuple[int, float]]] = {}
    for line, keys in lines.items():
        history: list[Metric] = []
        for key in keys:
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            if history:
                break
        curves[line] = [(epoch_at.get(m.step, i) + 1, m.value) for i, m in enumerate(history)]
    return curves


def _link_or_copy(source: Path, target: Path) -> None:
    """Stage a checkpoint under a fixed name without copying its bytes when the filesystem allows."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
