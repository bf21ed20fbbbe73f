"""How much does fusing with several methods in one job save over one job per method?

A pool like digits_soups' (one mnist5k source, fine-tuned on digits with 10 labels per class into six members
by learning rate and seed; members trained for ``--member-epochs``) is fused with the nine methods that need no
student: first one ``transfuse-fuse`` call per method (each loads the six members and runs them over the data),
then one call with ``fusion_method=[...]`` (members loaded and run once). Both are in-process calls of
``transfuse.fuse.fuse``, timed on the same pool in the same run; the ratio is the saving. The script also checks
that every method's test accuracy is the same either way.

Usage::

    .venv/bin/python scripts/bench_fuse.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from transfuse.config import compose_config, compose_train_config
from transfuse.fuse import fuse
from transfuse.train import train

METHODS = [
    "best_member",
    "uniform_soup",
    "greedy_soup",
    "logit_mean",
    "prob_mean",
    "vote",
    "weighted",
    "stacking",
    "feature_concat",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member-epochs", type=int, default=2)
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for name in ("lightning", "lightning.pytorch", "mlflow", "alembic", "transfuse"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_fuse-") as tmp:
        root = Path(tmp)
        store = [f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db", "trainer.enable_progress_bar=false"]
        train(compose_train_config([*store, "data=mnist5k", "trainer.max_epochs=1", "+tags.role=source"], root / "s"))
        member = [
            *store,
            "stage=finetune",
            "data=digits",
            "data.train_per_class=10",
            "init.weights=\"tags.role = 'source'\"",
            f"trainer.max_epochs={args.member_epochs}",
            "+tags.role=member",
        ]
        for i, (lr, seed) in enumerate((lr, seed) for lr in ("1e-4", "3e-4", "1e-3") for seed in (0, 1)):
            train(compose_train_config([*member, f"optimizer.lr={lr}", f"seed={seed}"], root / f"m{i}"))
        pool = [*store, "data=digits", "data.train_per_class=10", "pool.filter=\"tags.role = 'member'\""]

        def timed(methods: str, experiment: str) -> tuple[float, dict[str, float]]:
            cfg = compose_config(
                "fuse", [*pool, f"fusion_method={methods}", f"logger.experiment_name={experiment}"], root
            )
            start = time.perf_counter()
            fuse(cfg)
            return time.perf_counter() - start, {}

        separate = {m: timed(m, "separate")[0] for m in METHODS}
        together, _ = timed(f"[{','.join(METHODS)}]", "together")

        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        accuracy = {
            experiment: {
                r.data.tags["method"]: r.data.metrics["test/acc"]
                for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
            }
            for experiment in ("separate", "together")
        }
    print(f"fusing 6 members (resnet18, digits, {args.member_epochs}-epoch fine-tunes) with {len(METHODS)} methods")
    for m in METHODS:
        same = "same" if accuracy["separate"][m] == accuracy["together"][m] else "DIFFERENT"
        print(f"  {m:15s} alone {separate[m]:6.2f} s   test/acc {accuracy['separate'][m]:.4f} ({same} in one job)")
    total = sum(separate.values())
    print(f"one job per method: {total:.2f} s; one job for all: {together:.2f} s; saving {total / together:.2f}x")


if __name__ == "__main__":
    main()
