"""How do a report, an ``init.weights`` query and a sweep's skip check grow with the number of runs in a store?

A store is filled, without training, with synthetic runs shaped like transfuse-train's: the tags it sets
(stage, data, backbone, finetune, seed, config and recipe hashes, sweep ids, study), the 124 parameters of a
flattened train config, and per-epoch metrics (10 epochs of train/val loss, accuracy, ECE and learning rate)
plus the test metrics of the end of a run; runs come in recipes of 5 seeds, and all FINISHED. The store is
opened as transfuse opens one (:func:`transfuse.tracking.store.open_store`, which indexes tag and param
values) and grows to each size in turn (100, 1,000, 10,000 runs by default); at each size three reads are
timed, the median of ``--repeats`` after an untimed one:

(a) report: ``transfuse-report --experiment bench --rows tags.stage,tags.finetune --columns tags.data``, which
    reads every run of the experiment;
(b) weights: the run that ``init.weights="tags.stage = 'pretrain' and tags.data = 'mnist5k' and params.seed =
    '3'"`` picks (:func:`transfuse.weights.sources.find_run`, every experiment searched);
(c) skip: :func:`transfuse.sweeps.finished_twin`, the look-up of a relaunched sweep job, for a config hash that
    FINISHED (hit) and for one that never ran (miss).

Each time is printed with its growth over the smallest size: an indexed look-up stays near 1x while the runs
grow 100x; a read of every run grows with them.

``--server`` then does the same with PostgreSQL (from the ``pgserver`` wheel of the ``dev`` extras, as in
``tests/test_postgres.py``) behind ``mlflow server``: the runs are written straight into the database through
MLflow's SQL store (the rows a server writes, without an HTTP round trip per call), and read both through the
server over HTTP, as a job on another machine would, and straight from the database
(``--tracking-uri postgresql+psycopg2://...``). Filling takes about 45 s per 1,000 runs into SQLite and 50 s into
PostgreSQL on two cores.

Usage::

    .venv/bin/python scripts/bench_store.py                     # SQLite: 100, 1,000, 10,000 runs (~9 min)
    .venv/bin/python scripts/bench_store.py --quick             # 100 and 1,000 runs (~1 min; ~2.5 min with --server)
    .venv/bin/python scripts/bench_store.py --server            # and PostgreSQL behind a server (~18 min)
    .venv/bin/python scripts/bench_store.py --sizes 100,2000 --keep /tmp/bench   # keep the stores there
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from transfuse.tracking.store import open_store
from transfuse.tracking.tags import HASH_TAG, RECIPE_TAG, SWEEPS_TAG

EXPERIMENT = "bench"
#: what the timed reads ask for
REPORT_ARGS = ["--experiment", EXPERIMENT, "--rows", "tags.stage,tags.finetune", "--columns", "tags.data"]
WEIGHTS_QUERY = "tags.stage = 'pretrain' and tags.data = 'mnist5k' and params.seed = '3'"
STAGES = ["pretrain", "pretrain", "finetune", "finetune", "finetune", "fuse"]
DATA = ["mnist5k", "digits", "svhn", "usps", "synthetic"]
BACKBONES = ["resnet18", "vit_tiny_patch16_224", "convnext_atto"]
FINETUNES = ["full", "linear_probe", "lp_ft", "l2_sp", "partial"]
EPOCHS = 10
PER_EPOCH = ["train/loss_epoch", "train/acc_epoch", "val/loss", "val/acc", "val/ece", "lr-AdamW"]
FINAL = ["test/acc", "test/loss", "test/ece", "test_last/acc", "test_last/loss", "val/acc_best", "time/fit_s"]
SEEDS = 5


def template_params() -> dict[str, str]:
    """The parameters transfuse-train logs for a real config (``stage=finetune data=mnist5k``), flattened."""
    from omegaconf import OmegaConf

    from transfuse.config import compose_train_config, register_resolvers
    from transfuse.tracking.run import flatten

    register_resolvers()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train_config(
            ["stage=finetune", "data=mnist5k", f"logger.tracking_uri=sqlite:///{tmp}/x.db"], Path(tmp)
        )
        return flatten(OmegaConf.to_container(cfg, resolve=True))


def digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def synthetic_run(i: int, params: dict[str, str], now_ms: int) -> tuple[dict[str, str], list[Param], list[Metric]]:
    """Tags, parameters and metrics of the ``i``-th run: recipe ``i // SEEDS``, seed ``i % SEEDS``."""
    recipe, seed = divmod(i, SEEDS)
    rng = random.Random(i)
    stage, data = STAGES[recipe % len(STAGES)], DATA[(recipe // len(STAGES)) % len(DATA)]
    backbone, finetune = BACKBONES[recipe % len(BACKBONES)], FINETUNES[(recipe // 7) % len(FINETUNES)]
    lr = [1e-4, 3e-4, 1e-3, 3e-3][recipe % 4]
    sweep = f"multirun/2026-11-{1 + (i // 400) % 28:02d}/07-{(i // 20) % 60:02d}-00-{i // 20}"
    tags = {
        "stage": stage,
        "data": data,
        "backbone": backbone,
        "finetune": finetune,
        "seed": str(seed),
        HASH_TAG: digest("config", i),
        RECIPE_TAG: digest("recipe", recipe),
        "sweep_id": sweep,
        SWEEPS_TAG: sweep,
        "study_run": f"2026-11-{1 + (i // 1000) % 28:02d}",
        "host": f"node{i % 8:02d}",
        "pid": str(1000 + i),
        "mlflow.runName": f"{stage}-{data}-{backbone}-s{seed}",
        "mlflow.user": "bench",
        "mlflow.source.name": "transfuse-train",
        "mlflow.source.git.commit": digest("commit", i // 2000),
    }
    if stage == "finetune":
        tags |= {"source_run_id": digest("source", recipe) * 2, "init.source": f"runs:/{digest('source', recipe) * 2}"}
    values = dict(params)
    values |= {"seed": str(seed), "tags.seed": str(seed), "tags.stage": stage, "tags.data": data}
    values |= {"tags.backbone": backbone, "backbone.name": backbone, "tags.finetune": finetune}
    values |= {"optimizer.lr": str(lr), "run_name": tags["mlflow.runName"], "data.subset_seed": str(seed)}
    values |= {"paths.output_dir": f"/data/{sweep}/{i % 20}", "trainer.default_root_dir": f"/data/{sweep}/{i % 20}"}
    metrics, accuracy = [], rng.uniform(0.3, 0.6)
    for epoch in range(EPOCHS):
        accuracy = min(0.99, accuracy + rng.uniform(0.0, 0.05))
        at = now_ms + epoch * 1000
        points = [1.5 - accuracy, accuracy, 1.6 - accuracy, accuracy - 0.02, 0.1 * (1 - accuracy), lr]
        metrics += [Metric(key, value, at, epoch) for key, value in zip(PER_EPOCH, points, strict=True)]
    finals = [accuracy - 0.03, 1.6 - accuracy, 0.05, accuracy - 0.04, 1.7 - accuracy, accuracy - 0.02, 60.0]
    metrics += [Metric(key, value, now_ms + EPOCHS * 1000, 0) for key, value in zip(FINAL, finals, strict=True)]
    return tags, [Param(k, v) for k, v in values.items()], metrics


def fill(client: MlflowClient, experiment_id: str, start: int, stop: int, params: dict[str, str]) -> None:
    """Log runs ``start`` to ``stop - 1`` as transfuse-train would: create, parameters in batches of 100 (MLflow's
    limit) with the metrics and tags in the first, then FINISHED."""
    for i in range(start, stop):
        now_ms = 1_780_000_000_000 + i * 60_000  # a run a minute: start times order the runs like real ones
        tags, params_i, metrics = synthetic_run(i, params, now_ms)
        run = client.create_run(experiment_id, start_time=now_ms, tags={"mlflow.runName": tags["mlflow.runName"]})
        run_id = run.info.run_id
        tags_i = [RunTag(k, v) for k, v in tags.items() if k != "mlflow.runName"]
        client.log_batch(run_id, metrics=metrics, params=params_i[:100], tags=tags_i, synchronous=True)
        for first in range(100, len(params_i), 100):
            client.log_batch(run_id, params=params_i[first : first + 100], synchronous=True)
        client.set_terminated(run_id, "FINISHED", end_time=now_ms + EPOCHS * 1000 + 5000)


def without_fsync(client: MlflowClient) -> None:
    """Let a SQLite store skip the fsync of every commit while it is filled (a benchmark's store needs no crash
    safety, and MLflow commits several times per call): the fill takes a third of the time. Reads are unchanged."""
    from sqlalchemy import event

    engine = client._tracking_client.store.engine  # MLflow's SqlAlchemyStore
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA synchronous = OFF"))
        engine.dispose()  # connections opened from now on run the pragma


def timed(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``call`` over ``repeats`` calls, after one untimed call (imports, caches); a call that
    takes over 5 s is timed once, by that first call."""
    start = time.perf_counter()
    call()
    if (first := time.perf_counter() - start) > 5:
        return first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(tracking_uri: str) -> None:
    from transfuse.report.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        main([*REPORT_ARGS, "--tracking-uri", tracking_uri])


def measure(tracking_uri: str, size: int, repeats: int) -> dict[str, float]:
    """The three reads over a store of ``size`` runs, through ``tracking_uri``."""
    from transfuse.sweeps import finished_twin
    from transfuse.weights.sources import find_run

    client = MlflowClient(tracking_uri)
    hit = digest("config", size // 2)  # a job in the middle of the store relaunched
    assert finished_twin(client, EXPERIMENT, hit) is not None
    return {
        "report": timed(lambda: report(tracking_uri), repeats),
        "weights": timed(lambda: find_run(client, WEIGHTS_QUERY), repeats),
        "skip hit": timed(lambda: finished_twin(client, EXPERIMENT, hit), repeats),
        "skip miss": timed(lambda: finished_twin(client, EXPERIMENT, digest("never", size)), repeats),
    }


def bench(write_uri: str, readers: dict[str, str], sizes: Sequence[int], repeats: int, params: dict[str, str]) -> None:
    """Grow the store written through ``write_uri`` to each size and time the reads through each of ``readers``
    (a label -> a tracking URI), printing a line per size and reader."""
    writer = open_store(write_uri)  # as transfuse opens a store: with the indexes it adds to a database
    without_fsync(writer)
    experiment_id = writer.create_experiment(EXPERIMENT)
    first: dict[str, dict] = {}
    filled, fill_s = 0, 0.0
    for size in sizes:
        start = time.perf_counter()
        fill(writer, experiment_id, filled, size, params)
        fill_s += time.perf_counter() - start
        filled = size
        for label, uri in readers.items():
            row = {"runs": size, "fill": fill_s, **measure(uri, size, repeats)}
            print(row_line(label, row, first.setdefault(label, row)), flush=True)


COLUMNS = ["report", "weights", "skip hit", "skip miss"]


def header() -> str:
    cells = [
        f"{'read from':<10}",
        f"{'runs':>7}",
        f"{'fill s':>7}",
        *(f"{c + ' s':>11} {'growth':>6}" for c in COLUMNS),
    ]
    return "  ".join(cells)


def row_line(label: str, row: dict, first: dict) -> str:
    cells = [f"{label:<10}", f"{row['runs']:>7,}", f"{row['fill']:>7.1f}"]
    cells += [f"{row[name]:>11.3f} {row[name] / first[name]:>5.1f}x" for name in COLUMNS]
    return "  ".join(cells)


@contextlib.contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench_store-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated store sizes, growing")
    parser.add_argument("--quick", action="store_true", help="sizes 100 and 1,000 only (a check that it works)")
    parser.add_argument("--server", action="store_true", help="also a PostgreSQL-backed mlflow server")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each read (the median is shown)")
    parser.add_argument("--keep", type=Path, help="write the stores into this folder and keep them")
    args = parser.parse_args()
    sizes = [100, 1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        parser.error("--sizes must grow")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for name in ("mlflow", "alembic", "transfuse"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    params = template_params()
    print(f"synthetic runs: {len(params)} params, {EPOCHS * len(PER_EPOCH) + len(FINAL)} metric points, ~16 tags each")
    with workdir(args.keep) as root:
        print(f"\nruns in a SQLite store ({root / 'mlflow.db'}), read by transfuse\n{header()}", flush=True)
        sqlite = f"sqlite:///{root}/mlflow.db"
        bench(sqlite, {"sqlite": sqlite}, sizes, args.repeats, params)
        if args.server:
            from _servers import mlflow_server, postgres

            with postgres(root / "pgdata") as database, mlflow_server(database, root / "artifacts") as uri:
                print(f"\nruns in PostgreSQL, read through mlflow server {uri} and straight from the database")
                print(header(), flush=True)
                # PostgreSQL's equivalent of the SQLite pragma, for the writing connections only
                writer = f"{database}&options=-csynchronous_commit%3Doff"
                bench(writer, {"server": uri, "postgresql": database}, sizes, args.repeats, params)


if __name__ == "__main__":
    main()
