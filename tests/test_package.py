"""transfuse as others install it: the lock that a fresh checkout installs, and a built wheel run outside the checkout.

The wheel test builds transfuse from a copy of the sources, installs it (not editable, no dependencies, no index)
into a new environment that borrows this one's installed dependencies, and runs the commands from an empty folder
with a config folder of the user's own, as README's "transfuse as an installed package" says.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from transfuse.config import CONF_DIR, EXPERIMENTS_DIR

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"

#: the user's own data preset, derived from a packaged one by its defaults list
USER_DATA = """\
# Shapes as the packaged preset draws them, fewer per class.
defaults:
  - synthetic
  - _self_
per_class: 12
"""
#: the user's own study
USER_EXPERIMENT = """\
# @package _global_
defaults:
  - override /data: my_synthetic
  - override /backbone: test_resnet
tags:
  study: my_study
"""


def test_lock_pins_every_requirement_of_pyproject():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    requirements = [line for line in LOCK.read_text().splitlines() if line and not line.startswith(("#", " "))]
    loose = [line for line in requirements if not re.fullmatch(r"[A-Za-z0-9._-]+==[^\s;=<>~!]+", line)]
    assert not loose, f"lines of {LOCK.name} that are not exact pins: {loose}"
    assert any(line.startswith("torch==") for line in requirements)


def test_this_environment_has_the_locked_versions():
    """The tests run with the lock's versions (scripts/_bootstrap.sh installs them); a package upgraded by hand
    shows here, before it changes a result."""
    pins = dict(line.split("==") for line in LOCK.read_text().splitlines() if line and line[0] not in "# ")
    differ = {}
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ[name] = f"locked {version}, installed {installed}"
    assert not differ, (
        f"pip install -r {LOCK.name}, or lock what you installed (scripts/lock.py -P <name>==<version>): {differ}"
    )


def test_a_checkout_reads_conf_and_experiments_at_its_root():
    assert (ROOT / "src" / "transfuse" / "conf").is_symlink()
    assert CONF_DIR == ROOT / "conf"
    assert EXPERIMENTS_DIR == ROOT / "experiments"


def _build_wheel(dist: Path) -> Path:
    """The wheel of a copy of the sources (setuptools builds in a ``build/`` folder beside pyproject.toml)."""
    source = dist.parent / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "conf", source / "conf", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "src" / "transfuse", source / "src" / "transfuse", symlinks=True, ignore=ignore)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist]
    result = subprocess.run([*build, source], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BuildBackendWarning" not in result.stderr, result.stderr[-3000:]
    (wheel,) = dist.glob("transfuse-*.whl")
    return wheel


def _new_environment(env: Path, wheel: Path) -> None:
    """A venv whose own site-packages holds only transfuse, and that reads this environment's site-packages for
    the rest (a .pth line adds that folder without running its .pth files, so the editable checkout stays out)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [env / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed"]
    result = subprocess.run([*install, wheel], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(module_dir: Path) -> tuple[Path, Path]:
    """(the new environment, the wheel it installed)."""
    folder = module_dir
    wheel = _build_wheel(folder / "dist")
    _new_environment(folder / "env", wheel)
    return folder / "env", wheel


def _run(env: Path, command: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``<env>/bin/<command> <args>`` in ``cwd``, with the default tracking store and nothing of the checkout."""
    drop = ("MLFLOW_TRACKING_URI", "PYTHONPATH", "VIRTUAL_ENV")
    environ = {**{k: v for k, v in os.environ.items() if k not in drop}, "HF_HUB_OFFLINE": "1"}
    environ["PATH"] = f"{env / 'bin'}:{environ['PATH']}"
    return subprocess.run(
        [env / "bin" / command, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # the fixture builds and installs a wheel: a few seconds
def test_the_wheel_carries_the_configs_but_not_the_studies(installed, tmp_path):
    env, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {n.removeprefix("transfuse/conf/") for n in names if n.startswith("transfuse/conf/")}
    expected = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert packaged == expected
    assert not any(n.startswith("transfuse/conf/experiment") for n in names)
    where = _run(
        env, "python", ["-c", "import transfuse.config as c; print(c.CONF_DIR, c.EXPERIMENTS_DIR.is_dir())"], tmp_path
    )
    assert where.returncode == 0, where.stderr
    conf_dir, studies = where.stdout.split()
    assert Path(conf_dir).is_relative_to(env) and (Path(conf_dir) / "train.yaml").is_file()
    assert studies == "False"


@pytest.mark.slow  # a fit, a report and two more commands in the new environment: about a minute on two cores
def test_the_installed_commands_run_from_an_empty_folder_with_user_configs(installed, tmp_path):
    env, _ = installed
    mine = tmp_path / "my_conf"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "my_synthetic.yaml").write_text(USER_DATA)
    (mine / "experiment").mkdir()
    (mine / "experiment" / "my_study.yaml").write_text(USER_EXPERIMENT)
    work = tmp_path / "work"
    work.mkdir()

    train = _run(
        env,
        "transfuse-train",
        [f"hydra.searchpath=[file://{mine}]", "data=my_synthetic", "backbone=test_resnet", "trainer.max_epochs=1"],
        work,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("transfuse").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["data"] == "my_synthetic" and "test/acc" in run.data.metrics

    report = _run(env, "transfuse-report", ["--experiment", "transfuse", "--rows", "tags.data"], work)
    assert report.returncode == 0, report.stderr
    assert "| my_synthetic |" in report.stdout

    study = _run(env, "transfuse-train", ["--config-dir", str(mine), "experiment=my_study", "--cfg", "job"], work)
    assert study.returncode == 0, study.stderr
    assert "per_class: 12" in study.stdout and "study: my_study" in study.stdout

    fuse = _run(env, "transfuse-fuse", ["--help"], work)
    assert fuse.returncode == 0, fuse.stderr
    assert "fusion_method: " in fuse.stdout
