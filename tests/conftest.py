"""Shared fixtures: compose the real configs offline, on CPU, with every artefact under a temporary folder."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from transfuse.config import compose_train_config, register_resolvers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PYTEST_XDIST_WORKER" in os.environ:  # one core per worker: two workers on two cores without oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
register_resolvers()

#: overrides that keep a real fit to a few seconds on two cores
FAST = [
    "data=synthetic",
    "data.per_class=24",
    "backbone=test_resnet",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "cost.latency_batches=[1,8]",  # timing batches of 256 would add a quarter second to every tested fit
]


#: the modules that take minutes (the README's commands, the shortened studies), run first: xdist's loadscope gives
#: each worker a module at a time, in collection order (scripts/test.sh turns off its reordering by test count),
#: so one found last would run alone at the end of the suite
FIRST = ("test_readme.py", "test_studies.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))


def compose_config(overrides: list[str], root: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` as the CLI would, with outputs and the MLflow store under ``root``."""
    return compose_train_config([f"logger.tracking_uri=sqlite:///{root}/mlflow.db", *overrides], root / "out")


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised MLflow SQLite store; creating one runs every migration and takes seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def module_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder shared by one module's tests, removed when they all passed (kept to debug a failure).

    Trained zoos and stores add up to gigabytes over the full suite; pytest alone keeps them to its end.
    """
    failed = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2].removeprefix("test_"))
    yield path
    if request.session.testsfailed == failed:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def tracking_uri(tmp_path: Path, _empty_store: Path) -> str:
    """Each test gets its own copy of an empty store at ``tmp_path/mlflow.db``."""
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides)``: the composed config of one test, sharing one store per test."""
    return lambda *overrides: compose_config(list(overrides), tmp_path)


def run_cli(module: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a user would type it, in ``cwd``, with the default tracking store
    (``env``: extra environment variables)."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def last_line(stderr: str) -> str:
    """The last non-empty line a command printed on stderr (where its one-line error goes)."""
    return [line for line in stderr.splitlines() if line.strip()][-1]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, from its IHDR chunk (the first one, right after the signature)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])
