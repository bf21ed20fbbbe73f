"""The README as a newcomer uses it: the demo, then every command block in order, as written.

Only the number of epochs (and of Optuna trials) is shortened, by a wrapper placed before the real entry points
on ``PATH``; commands that need what this machine cannot have (a Slurm cluster, a PostgreSQL host, a browser
session) are skipped by an explicit list, and the list must still match the README. A second test checks that
every metric and tag name the README promises is one that these runs logged.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

#: README commands that cannot run here, each with the reason; every pattern must match a README line
SKIPPED = {
    r"^bash scripts/(demo|test)\.sh": "set-up: the fixture runs a shortened demo, and this is the test suite",
    r"^mlflow ui ": "a server that runs until stopped (tests/test_server.py covers MLflow's server)",
    r"^pip install psycopg2-binary": "a team server on PostgreSQL: another host",
    r"^mlflow server --backend-store-uri postgresql": "a team server on PostgreSQL: another host",
    r"^export MLFLOW_TRACKING_URI=http://mlflow-host": "a team server on PostgreSQL: another host",
    r"hydra/launcher=slurm": "needs a Slurm cluster",
    r"^\.venv/bin/python scripts/bench_": "benchmarks take minutes each",
}

#: the wrapper: drops typed epoch counts and appends short ones (6 for LP-FT, which refuses to end inside its
#: 5-epoch probe), and caps Optuna's trials; everything else reaches the real command unchanged
SHIM = """#!{python}
import os, sys
real = {real!r}
args = [a for a in sys.argv[1:] if not a.startswith("trainer.max_epochs=")]
args = ["hydra.sweeper.n_trials=2" if a.startswith("hydra.sweeper.n_trials=") else a for a in args]
if "--help" not in args:
    flags = [i for i, a in enumerate(args) if a.startswith("--")]
    at = flags[0] if flags and flags[0] > 0 else len(args)  # Hydra's parser takes one run of overrides
    args.insert(at, "trainer.max_epochs=" + ("6" if any("lp_ft" in a for a in args) else "1"))
os.execv(real, [real, *args])
"""


def commands(text: str) -> list[list[str]]:
    """The README's ``bash`` blocks, each a list of commands (continuation lines joined, comments dropped)."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", "", block)
        lines = [re.sub(r"\s+#(?![^\"']*['\"]).*$", "", line).strip() for line in joined.splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def runnable(blocks: list[list[str]]) -> tuple[list[str], set[str]]:
    """The commands to run in order, and the skip patterns that matched."""
    keep, matched = [], set()
    for block in blocks:
        for line in block:
            hits = [pattern for pattern in SKIPPED if re.search(pattern, line)]
            matched.update(hits)
            if not hits:
                keep.append(line)
    return keep, matched


def shim_dir(folder: Path) -> Path:
    folder.mkdir()
    for name in ("transfuse-train", "transfuse-fuse"):
        path = folder / name
        path.write_text(SHIM.format(python=sys.executable, real=str(BIN / name)))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.fixture(scope="module")
def readme_store(module_dir: Path) -> tuple[Path, str]:
    """A folder where the shortened demo and then the README's commands ran; (folder, their output)."""
    work = module_dir / "newcomer"
    work.mkdir()
    shims = shim_dir(module_dir / "bin")
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "PATH": f"{shims}:{BIN}:{os.environ['PATH']}",
        "SEEDS": "0,1,2",
        "RESULTS": str(work / "results"),
        "HOME": str(work / "home"),  # the README copies a study to ~/shared-study
    }
    demo = subprocess.run(
        ["bash", str(ROOT / "experiments/digits_transfer/run.sh")],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    script, matched = runnable(commands(README.read_text()))
    assert matched == set(SKIPPED), f"skip patterns that no longer match the README: {set(SKIPPED) - matched}"
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(f"echo {shlex.quote('+ ' + c)}\n{c}" for c in script)],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return work, output


def test_every_readme_command_runs_as_written_after_the_demo(readme_store):
    work, output = readme_store
    assert "Traceback" not in output, output[-6000:]
    errors = [line for line in output.splitlines() if re.match(r"transfuse-\w+: (error|job)", line)]
    assert not errors, errors
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    statuses = {run.info.status for run in runs}
    assert statuses == {"FINISHED"}, statuses
    stages = {run.data.tags.get("stage") for run in runs}
    assert {"pretrain", "finetune", "evaluate", "score", "adapt", "fuse"} <= stages
    assert (work / "table.tex").is_file() and (work / "labels.png").is_file()
    copy = MlflowClient(f"sqlite:///{work}/home/shared-study/mlflow.db")  # the moved study reads its own artifacts
    experiment = copy.get_experiment_by_name("digits_transfer")
    assert experiment.artifact_location.startswith(f"file://{work}/home/shared-study/")


def readme_metric_names(text: str) -> set[str]:
    """Metric names the README quotes in backticks (``test/acc``, ``member/<i>/test/acc``), wildcards left out."""
    names = set(re.findall(r"`((?:train|val|test|test_last|test_source|val_target|transfer|cost|member|members|weight)"
                           r"(?:/[\w<>.]+)+)`", text))  # fmt: skip
    return {name for name in names if "*" not in name}


def readme_tag_names(text: str) -> set[str]:
    """Tag names the README lists in its Tracking section (the backticked words of the sentence on tags) and
    the ``tags.<name>`` keys its commands filter or lay out by."""
    sentence = re.search(r"; tags\n(.*?)study\);", text, flags=re.DOTALL)
    assert sentence, "the Tracking section's sentence on tags moved: update this test"
    listed = set(re.findall(r"`(\w+)`", sentence.group(1)))
    used = set(re.findall(r"tags\.(\w+)", "\n".join(line for block in commands(text) for line in block)))
    return listed | used


def _pattern(name: str) -> str:
    """A README metric name as a regular expression: ``<i>`` a member's index, any other ``<placeholder>`` (a task,
    a source) one path segment."""
    escaped = re.escape(name).replace(re.escape("<i>"), r"\d+")
    return re.sub(re.escape("<") + r"\w+" + re.escape(">"), r"[^/]+", escaped)


def test_every_metric_and_tag_the_readme_names_is_logged(readme_store):
    work, _ = readme_store
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    metrics = {key for run in runs for key in run.data.metrics}
    tags = {key for run in runs for key in run.data.tags}
    text = README.read_text()
    names = readme_metric_names(text)
    assert {"test/acc", "train/align_loss", "member/<i>/test/acc", "transfer/leep"} <= names  # the parser sees them
    missing = {n for n in names if not any(re.fullmatch(_pattern(n), m) for m in metrics)}
    assert not missing, f"the README names metrics no run logged: {sorted(missing)}"
    tag_names = readme_tag_names(text)
    assert {"stage", "finetune", "recipe_hash", "sweep_id"} <= tag_names
    absent = tag_names - tags
    assert not absent, f"the README names tags no run carries: {sorted(absent)}"
