"""How much slower is a transfuse run than the same training written as a plain PyTorch loop?

transfuse wraps every step in Lightning, torchmetrics and MLflow; this script checks that the wrapping costs at
most 10% of wall time on a realistic CPU workload. Both sides do the same work:

(a) plain: seed, build the datamodule and the same timm backbone + linear head from the composed config, then
    ``steps`` iterations of the datamodule's train loader with its device-side transform, forward,
    cross-entropy, backward and an AdamW step (and the config's per-epoch LR schedule).
(b) transfuse: ``transfuse.train.train(cfg)`` on the same config, stopped after the same number of steps, with
    validation and test switched off. Checkpoints are selected on ``train/loss_epoch`` so that a best and a last
    checkpoint are still written and uploaded (with ``limit_val_batches=0`` the default ``val/acc`` monitor
    would silently save nothing). Timed around the whole call: run creation, parameter logging, fit, metric
    logging and checkpoint upload into a SQLite MLflow store.

The two are interleaved (alternating which goes first) after one untimed warm-up of each, and the verdict is the
median of the per-repeat ratios b/a.

Usage::

    .venv/bin/python scripts/bench_overhead.py --repeats 5 --data mnist5k --backbone resnet18 --batch-size 64
    .venv/bin/python scripts/bench_overhead.py logger.metrics.synchronous=true   # extra overrides, both sides
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from transfuse.config import compose_train_config
from transfuse.train import train

TARGET_RATIO = 1.10


def plain_loop(cfg: DictConfig, steps: int) -> float:
    """Train the config's backbone and head for ``steps`` AdamW steps without Lightning.

    Returns the mean loss of the last epoch, which matches transfuse's ``train/loss_epoch`` when both did the same.
    """
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data)
    class_names = datamodule.class_names  # loads and splits the data before the model, in train()'s order
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head, in_features=backbone.num_features, num_classes=len(class_names))
    model = nn.Sequential(backbone, head).train()
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer) if cfg.get("scheduler") else None  # stepped per epoch
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.model.label_smoothing)
    done = 0
    while done < steps:
        loss_sum, seen = 0.0, 0  # per epoch, like Lightning's train/loss_epoch
        for images, labels in datamodule.train_dataloader():
            loss = criterion(model(datamodule.transform(images, train=True)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, seen, done = loss_sum + loss.item() * len(labels), seen + len(labels), done + 1
            if done == steps:
                break
        if scheduler is not None:
            scheduler.step()
    return loss_sum / seen


def full_path(cfg: DictConfig) -> float:
    """One transfuse run; returns its ``train/loss_epoch`` (the mean loss of the last epoch)."""
    return train(cfg)["train/loss_epoch"]


def timed(fn: Callable[[], float], threads: int) -> tuple[float, float]:
    """Wall time of ``fn()`` and its result, starting from the same thread count and a collected heap."""
    torch.set_num_threads(threads)
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def quiet() -> None:
    """Keep Lightning, MLflow and Alembic from printing banners, progress bars and hints."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "transfuse"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning\.")
    warnings.filterwarnings("ignore", category=FutureWarning)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs after the warm-up")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps per run (default: one epoch)")
    parser.add_argument("--data", default="mnist5k", help="data preset (conf/data)")
    parser.add_argument("--backbone", default="resnet18", help="backbone preset (conf/backbone)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for both")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. logger.metrics.synchronous=true")
    return parser.parse_args()


def transfuse_overrides(tracking_uri: str, steps: int, per_epoch: int) -> list[str]:
    """Stop after ``steps`` steps, skip validation and test, and still write and upload checkpoints."""
    return [
        f"logger.tracking_uri={tracking_uri}",
        "logger.experiment_name=bench_overhead",
        f"trainer.max_epochs={math.ceil(steps / per_epoch)}",
        f"++trainer.max_steps={steps}",
        "++trainer.limit_val_batches=0",
        "stage.test=false",
        "monitor=train/loss_epoch",  # val/acc never appears without validation, and then nothing is saved
        "monitor_mode=min",
        "trainer.enable_progress_bar=false",
    ]


def summarise(plain_times: list[float], full_times: list[float]) -> None:
    """Print the medians and the verdict on the median of the per-repeat ratios."""
    ratio = statistics.median(b / a for a, b in zip(plain_times, full_times, strict=True))
    print(
        f"{'median':>6} {statistics.median(plain_times):>10.3f} {statistics.median(full_times):>14.3f} "
        f"{ratio:>7.3f}   (ratio: median of per-repeat transfuse/plain)"
    )
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"target: transfuse / plain at most {TARGET_RATIO:.2f} -> {ratio:.3f} {verdict}")


def main() -> None:
    args = parse_args()
    quiet()
    base = [f"data={args.data}", f"backbone={args.backbone}", f"data.batch_size={args.batch_size}"]
    with tempfile.TemporaryDirectory(prefix="bench_overhead-") as tmp:
        root = Path(tmp)
        per_epoch = len(instantiate(compose_train_config(base, root / "probe").data).train_dataloader())
        steps = args.steps or per_epoch
        tracking_uri = f"sqlite:///{root}/mlflow.db"
        overrides = [*base, *transfuse_overrides(tracking_uri, steps, per_epoch), *args.overrides]
        print(
            f"data={args.data} backbone={args.backbone} batch={args.batch_size} steps={steps} "
            f"({steps / per_epoch:.2f} epochs of {per_epoch}) threads={args.threads} repeats={args.repeats}",
            *args.overrides,
        )

        def run(name: str, index: int) -> tuple[float, float]:
            cfg = compose_train_config(overrides, root / f"run{index}")
            fn = (lambda: plain_loop(cfg, steps)) if name == "plain" else (lambda: full_path(cfg))
            return timed(fn, args.threads)

        warm_a, warm_b = run("plain", 0), run("transfuse", 0)
        print(f"warm-up (untimed): plain {warm_a[0]:.3f} s, transfuse {warm_b[0]:.3f} s")
        print(f"{'repeat':>6} {'plain [s]':>10} {'transfuse [s]':>14} {'ratio':>7}")
        plain_times, full_times = [], []
        for i in range(1, args.repeats + 1):
            order = ("plain", "transfuse") if i % 2 else ("transfuse", "plain")
            results = {name: run(name, i) for name in order}
            (a, loss_a), (b, loss_b) = results["plain"], results["transfuse"]
            plain_times.append(a)
            full_times.append(b)
            print(f"{i:>6} {a:>10.3f} {b:>14.3f} {b / a:>7.3f}   (mean train loss {loss_a:.4f} vs {loss_b:.4f})")
        summarise(plain_times, full_times)


if __name__ == "__main__":
    main()
