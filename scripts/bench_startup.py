"""How long do the transfuse commands take to answer, and how soon does a real run start training?

Every command runs as a fresh subprocess (what a user types), from a temporary working directory with
``MLFLOW_TRACKING_URI`` unset, so no store or output folder of the repository is touched. Measured, each as the
median wall time over ``--repeats`` rounds (the commands interleaved round by round, after one untimed import of
the heavy libraries to warm the file cache):

* the floor: ``python -c "import torch"`` (and, for reference, ``import timm``);
* ``transfuse-train --help``, ``transfuse-fuse --help``, ``transfuse-report --help``;
* ``transfuse-train --cfg job data=digits`` and ``... --cfg job --resolve data=digits``; the second resolves the
  backbone's normalisation through the ``${timm:...}`` resolver, so it imports timm (and with it torch);
* a config error, ``transfuse-train trainer.max_epoch=3`` (a typo), which must exit non-zero with an error;
* (a) the imports a run truly needs: ``python -X importtime -c "import torch, lightning, mlflow, timm,
  torchmetrics"`` (wall time; the cumulative import time of each package is printed from ``-X importtime``),
  and (a') the same imports without ``-X importtime``, whose bookkeeping itself costs time;
* (b) a real tiny run, ``python -m transfuse.train data=synthetic data.per_class=24 backbone=test_resnet
  trainer.max_epochs=1 ...`` into a SQLite store under the temporary directory: the time from just before the
  process is started until the first training step begins. The moment is taken by :class:`FirstStepMarker`, a
  Lightning callback defined here and injected with ``+callbacks.first_step._target_=bench_startup.
  FirstStepMarker`` (``PYTHONPATH`` points at this folder); it prints ``time.time()`` with a marker at the start
  of batch 0 and lets the run finish normally. Each run gets a copy of an already initialised empty store, as a
  user's second run would; creating the store (its migrations) is timed once and shown apart.

The table gives each median, its ratio to ``import torch`` measured in the same run, and the target: 2 s for
``--help``, ``--cfg job`` and the config error, and at most 1 s from the end of the imports (a) to the first
training step (median of the per-round differences b - a; b - a' is shown too). The script always exits 0.

Usage::

    .venv/bin/python scripts/bench_startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

SCRIPTS_DIR = Path(__file__).resolve().parent
MARKER = "BENCH_STARTUP_FIRST_STEP"
COMMAND_TARGET_S = 2.0
FIRST_STEP_TARGET_S = 1.0
RUN_IMPORTS = "torch, lightning, mlflow, timm, torchmetrics"


class FirstStepMarker(Callback):
    """Prints ``<MARKER> <time.time()>`` when the first training batch of the run starts; changes nothing else."""

    def __init__(self) -> None:
        self.done = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.done and batch_idx == 0:
            self.done = True
            print(f"{MARKER} {time.time():.6f}", flush=True)


@dataclass
class Case:
    """One command of the table: its argv, the target in seconds (None: no target) and whether it must fail."""

    label: str
    argv: list[str]
    target: float | None = COMMAND_TARGET_S
    must_fail: bool = False
    note: str = ""
    times: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stderr: str = ""


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without ``MLFLOW_TRACKING_URI``, offline, without MLflow's progress bars."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **extra}
    return env


def timed(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> tuple[float, float, str, str, int]:
    """Run ``argv``; return its start time (``time.time()``), wall seconds, stdout, stderr and exit code."""
    start_epoch, start = time.time(), time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return start_epoch, time.perf_counter() - start, proc.stdout, proc.stderr, proc.returncode


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def check(case: Case, rc: int, stderr: str) -> None:
    """Record a problem when a command did not exit as it should (0, or non-zero with an error for a typo)."""
    if case.must_fail:
        if rc == 0:
            case.problems.append("exited 0 although the override has a typo")
        elif "max_epoch" not in stderr:
            case.problems.append(f"exit {rc} without naming the bad key: {last_line(stderr)!r}")
    elif rc != 0:
        case.problems.append(f"exit {rc}: {last_line(stderr)!r}")


def import_breakdown(stderr: str) -> str:
    """Cumulative import time of each package where it was first imported (torchmetrics inside lightning), from
    ``-X importtime`` lines ``self | cumulative | name``."""
    wanted = [name.strip() for name in RUN_IMPORTS.split(",")]
    seen: dict[str, float] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+\s+\|\s+(\d+)\s+\|\s+(\S+)$", line)
        if match and match.group(2) in wanted and match.group(2) not in seen:  # where it was first imported
            seen[match.group(2)] = int(match.group(1)) / 1e6
    return ", ".join(f"{name} {seen[name]:.2f} s" if name in seen else f"{name} not listed" for name in wanted)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each timing is the median over them")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    python = sys.executable
    bin_dir = Path(python).parent
    with tempfile.TemporaryDirectory(prefix="bench_startup-") as tmp:
        root = Path(tmp)
        work = root / "cwd"
        work.mkdir()
        env = clean_env()
        run_env = clean_env(
            PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS_DIR), os.environ.get("PYTHONPATH")])),
            HYDRA_FULL_ERROR="1",  # a failed run shows its traceback below the table
        )
        failures: list[str] = []
        train = str(bin_dir / "transfuse-train")
        cases = [
            Case("python -c 'import torch'  (floor)", [python, "-c", "import torch"], target=None),
            Case("python -c 'import timm'", [python, "-c", "import timm"], target=None, note="reference"),
            Case("transfuse-train --help", [train, "--help"]),
            Case("transfuse-fuse --help", [str(bin_dir / "transfuse-fuse"), "--help"]),
            Case("transfuse-report --help", [str(bin_dir / "transfuse-report"), "--help"]),
            Case("transfuse-train --cfg job data=digits", [train, "--cfg", "job", "data=digits"]),
            Case(
                "transfuse-train --cfg job --resolve data=digits",
                [train, "--cfg", "job", "--resolve", "data=digits"],
                note="imports timm for ${timm:...}",
            ),
            Case(
                "transfuse-train trainer.max_epoch=3  (typo)",
                [train, "trainer.max_epoch=3"],
                must_fail=True,
            ),
        ]
        imports = Case(f"(a) python -X importtime -c 'import {RUN_IMPORTS}'", [], target=None)
        imports.argv = [python, "-X", "importtime", "-c", f"import {RUN_IMPORTS}"]
        plain_imports = Case("(a') the same imports without -X importtime", [], target=None, note="reference")
        plain_imports.argv = [python, "-c", f"import {RUN_IMPORTS}"]
        first_step = Case("(b) tiny run: first step after start", [], target=None)
        beyond = Case("(b) - (a): first step after the imports (a)", [], target=FIRST_STEP_TARGET_S)
        beyond_plain = Case("(b) - (a'): first step after the imports (a')", [], target=FIRST_STEP_TARGET_S)
        whole = Case("tiny run: whole process (1 epoch + test)", [], target=None, note="reference")

        print(f"python {python}, {os.cpu_count()} cores, {args.repeats} rounds, cwd {work}")
        timed(imports.argv, work, env)  # warm the file cache for every library, untimed
        store_uri = f"sqlite:///{root / 'empty.db'}"
        _, store_s, _, store_err, store_rc = timed(
            [python, "-c", f"from mlflow import MlflowClient; MlflowClient({store_uri!r}).search_experiments()"],
            work,
            env,
        )
        if store_rc != 0:
            print(f"could not create an empty MLflow store: {last_line(store_err)}")
            return
        breakdown = ""
        for repeat in range(args.repeats):
            for case in cases:
                _, seconds, _, stderr, rc = timed(case.argv, work, env)
                case.times.append(seconds)
                case.stderr = stderr
                check(case, rc, stderr)
            _, seconds, _, stderr, rc = timed(imports.argv, work, env)
            imports.times.append(seconds)
            check(imports, rc, stderr)
            breakdown = breakdown or import_breakdown(stderr)
            _, seconds, _, stderr, rc = timed(plain_imports.argv, work, env)
            plain_imports.times.append(seconds)
            check(plain_imports, rc, stderr)

            run_dir = root / f"run{repeat}"
            run_dir.mkdir()
            shutil.copyfile(root / "empty.db", run_dir / "mlflow.db")
            argv = [
                python,
                "-m",
                "transfuse.train",
                "data=synthetic",
                "data.per_class=24",
                "backbone=test_resnet",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                f"logger.tracking_uri=sqlite:///{run_dir / 'mlflow.db'}",
                "logger.experiment_name=bench_startup",
                "+callbacks.first_step._target_=bench_startup.FirstStepMarker",
            ]
            started, seconds, stdout, stderr, rc = timed(argv, run_dir, run_env)
            check(whole, rc, stderr)
            marks = [float(line.split()[1]) for line in stdout.splitlines() if line.startswith(MARKER)]
            if rc != 0 or not marks:
                first_step.problems.append(f"no first-step marker (exit {rc}): {last_line(stderr)!r}")
                failures.append(f"round {repeat}, exit {rc}, stderr ends:\n" + "\n".join(stderr.splitlines()[-25:]))
                continue
            whole.times.append(seconds)
            first_step.times.append(marks[0] - started)
            beyond.times.append(marks[0] - started - imports.times[-1])
            beyond_plain.times.append(marks[0] - started - plain_imports.times[-1])

        floor = statistics.median(cases[0].times)
        rows = [*cases, imports, plain_imports, first_step, beyond, beyond_plain, whole]
        width = max(len(case.label) for case in rows)
        print(f"{'command':<{width}} {'median s':>9} {'x torch':>8} {'target':>7}  verdict")
        for case in rows:
            if not case.times:
                print(f"{case.label:<{width}} {'-':>9} {'-':>8} {'-':>7}  FAILED: {'; '.join(case.problems)}")
                continue
            median = statistics.median(case.times)
            target = f"{case.target:.1f}" if case.target is not None else "-"
            if case.problems:
                verdict = "FAILED: " + case.problems[0]
            elif case.target is None:
                verdict = case.note or "info"
            else:
                verdict = "OK" if median <= case.target else "ABOVE TARGET"
                verdict += f"  ({case.note})" if case.note else ""
            print(f"{case.label:<{width}} {median:>9.3f} {median / floor:>8.2f} {target:>7}  {verdict}")
        short = {"(a)": imports, "(a')": plain_imports, "(b)": first_step, "(b)-(a)": beyond, "(b)-(a')": beyond_plain}
        for name, case in short.items():
            print(f"{name:<8} per round (s): " + ", ".join(f"{t:.2f}" for t in case.times))
        print(f"(a) cumulative import times (-X importtime, first round): {breakdown}")
        print(f"creating an empty MLflow SQLite store (migrations; once per store, not in (b)): {store_s:.2f} s")
        for failure in failures:
            print(f"tiny run failed in {failure}")
        shown = [line.strip() for line in cases[-1].stderr.splitlines() if line.strip()]
        print(f"config error shown ({len(shown)} lines): {' | '.join(shown[:2])}")


if __name__ == "__main__":
    main()
