"""Training throughput of a transfuse run on this CPU: fp32 vs bf16-mixed, NCHW vs channels_last, 32 and 64 px.

Each configuration is one ``transfuse.train.train(cfg)`` call (composed with ``compose_train_config`` as the CLI
would) of ``backbone=resnet18`` on ``data=mnist5k`` (augmentation on, as a real run has it) at
``backbone.image_size`` 32 or 64, for a fixed ``trainer.limit_train_batches`` (``--batches``, 32 of mnist5k's 57)
of one epoch, with validation, test, checkpoint upload and plots switched off. The configurations run
``--repeats`` times (2), the second pass in reverse order, and img/s is the best run's: on a shared machine other
work only ever slows a run down (every run's figure is printed beside it). Throughput is measured by
:class:`Throughput`, a Lightning callback injected through ``+callbacks.*._target_``: the images trained per
second from the end of the warm-up batches to the end of the last batch, so it covers fetching, the device-side
transform, forward, backward and the optimiser step of every timed batch, and none of the run's set-up.

* precision: ``trainer.precision=32-true`` (the CPU default) or ``bf16-mixed`` (autocast to bfloat16);
* memory format: transfuse has no channels_last switch (no ``channels_last``/``memory_format`` in ``conf/`` or
  ``src/``), so channels_last is what a user would add: :class:`ChannelsLast`, a callback that converts the model
  with ``pl_module.to(memory_format=torch.channels_last)`` in ``on_fit_start``. Batches still arrive NCHW from the
  datamodule's ``on_after_batch_transfer``; a convolution with channels_last weights computes in channels_last
  (PyTorch follows the weight's format on CPU), so after the stem the activations are channels_last as well.

In the same process the script measures the fp32 and bf16 matmul peak (``torch.matmul`` of 2048 x 2048, best of a few
repeats, before and after the throughput runs) and counts resnet18's forward FLOPs per image with
``torch.utils.flop_counter.FlopCounterMode`` (training counted as 3x forward), so each configuration is shown as img/s,
its ratio to fp32 NCHW at the same size, and the training GFLOP/s it achieves as a fraction of the fp32 matmul peak (and
of its own precision's peak).

Speed means nothing if the numbers change the result, so the script then trains fp32 and bf16 (NCHW), and any
channels_last variant fast enough to be adopted, for ``--acc-epochs`` (5) full epochs at 32 px with the same seed,
validation and test on, and prints val/acc_best and test/acc. Five and not one: after one to three epochs from
scratch, the eval-mode BatchNorm running statistics lag the weights (a plain PyTorch loop shows the same: 34% in
eval mode against 94% with batch statistics after one epoch), and test/acc then swings by tens of points between
numerically equivalent runs (fp32 NCHW against fp32 channels_last), which says nothing about precision; after five
epochs, with the cosine schedule run down, it settles near 97%. The final line recommends a CPU default: bf16 or
channels_last only where it is at least ``--min-speedup`` faster at every size and its test/acc is within
``--acc-tolerance`` points of fp32 NCHW; otherwise keep fp32 NCHW.

Usage::

    .venv/bin/python scripts/bench_throughput.py            # about 5 minutes on 2 idle cores
    .venv/bin/python scripts/bench_throughput.py --quick    # a smoke test of the script, under a minute

The machine should be otherwise idle (the load average is printed at the start and the end): on two cores a test
suite running beside it halves the figures and scrambles the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from transfuse.config import compose_train_config
from transfuse.train import train

#: what the Throughput callbacks measured, in the order the runs ended (read back after each ``train`` call)
MEASURED: list[tuple[int, float]] = []
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}


class Throughput(Callback):
    """Counts the images of the training batches after the first ``warmup`` and times them end to end."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup, self.images, self.start, self.end = warmup, 0, 0.0, 0.0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if batch_idx == self.warmup - 1:
            self.start = now
        elif batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.end = now

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        MEASURED.append((self.images, self.end - self.start))


class ChannelsLast(Callback):
    """Converts the model to channels_last when fit starts (the optimiser keeps the same parameter objects)."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.to(memory_format=torch.channels_last)


@dataclass
class Config:
    size: int
    precision: str  # a key of PRECISIONS
    channels_last: bool

    @property
    def label(self) -> str:
        return f"{self.size:>3} px  {self.precision}  {'channels_last' if self.channels_last else 'NCHW'}"

    def overrides(self) -> list[str]:
        extra = [f"+callbacks.channels_last._target_={__name__}.ChannelsLast"] if self.channels_last else []
        return [f"backbone.image_size={self.size}", f"trainer.precision={PRECISIONS[self.precision]}", *extra]


def quiet() -> None:
    """Keep Lightning, MLflow and Alembic from printing banners, progress bars and hints."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow  # noqa: F401  (mlflow sets its logger to INFO when imported: import it before lowering it)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "transfuse"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 3, calls: int = 5) -> float:
    """GFLOP/s of an ``n x n`` matmul in ``dtype``: the best of ``repeats`` timings of ``calls`` products."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * calls / best / 1e9


def forward_flops(common: list[str], size: int, root: Path) -> float:
    """FLOPs of one image through the config's backbone and head (eval mode; convolutions and matmuls)."""
    cfg = compose_train_config([*common, f"backbone.image_size={size}"], root)
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head, in_features=backbone.num_features, num_classes=10)
    model = nn.Sequential(backbone, head).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, cfg.backbone.in_chans, size, size))
    return float(counter.get_total_flops())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few batches and a tiny accuracy budget (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batches", type=int, default=None, help="training batches per configuration (default 32)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches at the start (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per configuration, best img/s (default 2)")
    parser.add_argument("--acc-epochs", type=int, default=None, help="epochs of each accuracy run (default 5)")
    parser.add_argument("--acc-batches", type=int, default=None, help="batches per accuracy epoch (default: all)")
    parser.add_argument("--acc-tolerance", type=float, default=1.5, help="points of test/acc counted as equal")
    parser.add_argument("--min-speedup", type=float, default=1.10, help="speed-up needed at every size to adopt")
    parser.add_argument("--data", default="mnist5k")
    args = parser.parse_args()
    batches, warmup, repeats, acc_epochs, acc_batches = (6, 2, 1, 1, 6) if args.quick else (32, 3, 2, 5, None)
    args.batches = args.batches or batches
    args.warmup = args.warmup or warmup
    args.repeats = args.repeats or repeats
    args.acc_epochs = args.acc_epochs or acc_epochs
    args.acc_batches = args.acc_batches or acc_batches
    return args


def main() -> None:
    args = parse_args()
    quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_throughput-") as tmp:
        root = Path(tmp)
        common = [
            f"data={args.data}",
            "backbone=resnet18",
            "trainer.enable_progress_bar=false",
            "last_checkpoint=none",
            "test_last=false",
            "logger.plots=false",
            f"logger.tracking_uri=sqlite:///{root}/mlflow.db",
            "logger.experiment_name=bench_throughput",
        ]
        timing = [
            *common,
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={args.batches}",
            "trainer.limit_val_batches=0",
            "stage.test=false",
            f"+callbacks.throughput._target_={__name__}.Throughput",
            f"+callbacks.throughput.warmup={args.warmup}",
        ]
        batch_size = compose_train_config(common, root / "probe").data.batch_size
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; data={args.data} "
            f"backbone=resnet18 batch={batch_size}; {args.batches} batches per configuration, first {args.warmup} "
            f"untimed; {args.repeats} run(s) each; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        print(f"matmul peak (2048x2048) at the start: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
        flops = {size: forward_flops(common, size, root / "flops") for size in args.sizes}
        print("resnet18 forward per image: " + ", ".join(f"{s} px {f / 1e6:.1f} MFLOP" for s, f in flops.items()))

        configs = [Config(s, p, cl) for s in args.sizes for p in PRECISIONS for cl in (False, True)]
        rates: dict[str, list[float]] = {c.label: [] for c in configs}
        fit_seconds: dict[str, list[float]] = {c.label: [] for c in configs}
        for repeat in range(args.repeats):
            for i, config in enumerate(configs if repeat % 2 == 0 else configs[::-1]):
                MEASURED.clear()
                metrics = train(compose_train_config([*timing, *config.overrides()], root / f"t{repeat}-{i}"))
                images, seconds = MEASURED[-1]
                rates[config.label].append(images / seconds)
                fit_seconds[config.label].append(metrics["time/fit_s"])

        peak = {
            "fp32": max(peak["fp32"], matmul_peak(torch.float32)),
            "bf16": max(peak["bf16"], matmul_peak(torch.bfloat16)),
        }
        print(f"matmul peak, best of start and end: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
        print()
        print(
            f"{'configuration':<30} {'img/s':>8} {'x fp32 NCHW':>12} {'train GFLOP/s':>14} {'of fp32 peak':>13} "
            f"{'of own peak':>12} {'fit s':>7}  img/s of each run"
        )
        speedups: dict[tuple[str, bool], list[float]] = {}
        for config in configs:
            rate = max(rates[config.label])
            base = max(rates[Config(config.size, "fp32", False).label])
            achieved = rate * 3 * flops[config.size] / 1e9
            speedups.setdefault((config.precision, config.channels_last), []).append(rate / base)
            print(
                f"{config.label:<30} {rate:>8.1f} {rate / base:>12.2f} {achieved:>14.1f} "
                f"{achieved / peak['fp32']:>13.1%} {achieved / peak[config.precision]:>12.1%} "
                f"{min(fit_seconds[config.label]):>7.1f}  {' '.join(f'{r:.0f}' for r in rates[config.label])}"
            )

        size = min(args.sizes)
        baseline = ("fp32", False)
        fast = {key for key, ratios in speedups.items() if key != baseline and min(ratios) >= args.min_speedup}
        checked = [baseline, ("bf16", False), *sorted(fast - {("bf16", False)})]
        limit = "null" if args.acc_batches is None else args.acc_batches
        accuracy_runs = [
            *common,
            f"trainer.max_epochs={args.acc_epochs}",
            f"trainer.limit_train_batches={limit}",
            f"backbone.image_size={size}",
        ]
        budget = f"{args.acc_epochs} epoch(s)" + ("" if args.acc_batches is None else f" of {args.acc_batches} batches")
        print()
        print(f"accuracy after {budget} of {args.data} at {size} px, seed 0 (test/acc of the best val/acc checkpoint):")
        accuracy: dict[tuple[str, bool], float] = {}
        for precision, channels_last in checked:
            config = Config(size, precision, channels_last)
            cfg = compose_train_config([*accuracy_runs, *config.overrides()], root / f"acc-{precision}-{channels_last}")
            with contextlib.redirect_stdout(io.StringIO()):  # Lightning's table of test metrics
                metrics = train(cfg)
            acc = accuracy[(precision, channels_last)] = metrics["test/acc"]
            delta = 100 * (acc - accuracy[baseline])
            print(
                f"  {config.label:<30} val/acc_best {metrics.get('val/acc_best', float('nan')):.4f}  "
                f"test/acc {acc:.4f}  ({delta:+.2f} points vs fp32 NCHW)"
            )

        adopt = [
            (statistics.mean(speedups[key]), key)
            for key in fast
            if abs(100 * (accuracy[key] - accuracy[baseline])) <= args.acc_tolerance
        ]
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n(whole script {time.perf_counter() - started:.0f} s; load average at the end {load})")
        if adopt:
            _, (precision, channels_last) = max(adopt)
            what = " + ".join(
                [f"trainer.precision={PRECISIONS[precision]}"] * (precision != "fp32")
                + ["channels_last"] * channels_last
            )
            print(
                f"recommendation: adopt {what} as the CPU default: at least {args.min_speedup:.2f}x faster than fp32 "
                f"NCHW at every size measured here, test/acc within {args.acc_tolerance} points"
            )
        else:
            print(
                f"recommendation: keep fp32 NCHW as the CPU default: no variant is at least {args.min_speedup:.2f}x "
                f"faster at every size measured here with test/acc within {args.acc_tolerance} points"
            )


if __name__ == "__main__":
    main()
