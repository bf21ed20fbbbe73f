"""How much faster is a linear probe when the frozen backbone's features are cached?

A linear probe trains only the head, so after the first epoch every backbone forward pass recomputes
features it has already computed. This script runs the same 20-epoch probe (training, validation every
epoch, test at the end, all through ``transfuse.train.train``) with ``finetune.cache_features`` off and on,
alternating the order over ``--repeats``, and prints the median wall-time ratios uncached / cached of the
fit (the 20 epochs) and of the whole run (which adds loading the data, opening the MLflow run and testing).
Augmentation is off in both, since cached features require unaugmented inputs. Target: at least 10x for
the fit.

Usage::

    .venv/bin/python scripts/bench_probe.py --epochs 20 --repeats 1
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from transfuse.config import compose_train_config
from transfuse.train import train

TARGET_SPEEDUP = 10.0


def run(overrides: list[str], root: Path) -> tuple[float, float, float]:
    """Wall time of one whole run, of its fit alone, and its test accuracy."""
    cfg = compose_train_config(overrides, root)
    start = time.perf_counter()
    metrics = train(cfg)
    return time.perf_counter() - start, metrics["time/fit_s"], metrics["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for name in ("lightning", "lightning.pytorch", "mlflow", "alembic", "transfuse"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_probe-") as tmp:
        common = [
            f"data={args.data}",
            f"backbone={args.backbone}",
            "trainer.enable_progress_bar=false",
            "last_checkpoint=none",
            f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
            "logger.experiment_name=bench_probe",
        ]
        # a probe of random features learns nothing, so first a short source pretraining to probe from
        _, _, source_acc = run([*common, "trainer.max_epochs=1", "+tags.role=source"], Path(tmp) / "source")
        probe = [
            *common,
            "stage=finetune",
            "init.weights=\"tags.role = 'source'\"",
            "data/augment=none",
            f"data.batch_size={args.batch_size}",
            "finetune=linear_probe",
            "optimizer.lr=1e-2",
            f"trainer.max_epochs={args.epochs}",
        ]
        print(f"{args.epochs}-epoch linear probe: data={args.data} backbone={args.backbone} batch={args.batch_size}")
        print(f"  (source: 1 epoch of pretraining on {args.data}, test/acc {source_acc:.4f})")
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for cached in (False, True) if repeat % 2 == 0 else (True, False):
                total, fit, accuracy = run(
                    [*probe, f"finetune.cache_features={cached}"], Path(tmp) / f"r{repeat}{cached}"
                )
                runs[cached].append((total, fit))
                print(
                    f"  repeat {repeat}  cache={'on ' if cached else 'off'}  run {total:7.2f} s  fit {fit:7.2f} s  "
                    f"test/acc {accuracy:.4f}"
                )
        for label, index in (("whole run", 0), ("fit (the 20 epochs)", 1)):
            off = statistics.median(t[index] for t in runs[False])
            on = statistics.median(t[index] for t in runs[True])
            print(f"{label}: without cache {off:.2f} s, with cache {on:.2f} s, speed-up {off / on:.1f}x")
        fit_speedup = statistics.median(t[1] for t in runs[False]) / statistics.median(t[1] for t in runs[True])
        verdict = "OK" if fit_speedup >= TARGET_SPEEDUP else "BELOW TARGET"
        print(f"target: fit speed-up at least {TARGET_SPEEDUP:.0f}x -> {fit_speedup:.1f}x {verdict}")


if __name__ == "__main__":
    main()
