"""The real MLflow UI in a headless Chromium, over the store of a tiny study (a pretraining and a fine-tune of it).

What a new user sees: the page URLs transfuse prints open the model-training view (not the GenAI one); the runs
table lists both runs by name with their datasets (name and the digest stored on the run); the fine-tune's page
links to its source run. Chromium comes from Debian's packages: the fixture installs it with apt-get when it is
missing and this process may, and skips with the reason otherwise.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from scripts._servers import mlflow_server

from tests.conftest import FAST, compose_config
from transfuse.tracking.run import RUN_PAGE
from transfuse.train import train

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    """A headless-capable Chromium: found on PATH, or installed from Debian's packages as root."""
    found = _browser()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired):
            pass
        found = _browser()
    if found is None:
        pytest.skip("no Chromium to drive the MLflow UI: install Debian's `chromium` package (apt-get needs root)")
    return found


def _page_text(chromium: str, url: str, profile: Path, expected: list[str]) -> str:
    """The rendered DOM of ``url`` as text (tags removed), read again with more time until every ``expected``
    string appears (the UI fetches runs after it loads; two busy cores can make that slow)."""
    text = ""
    for budget in (20_000, 45_000, 90_000):
        command = [
            *[chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            *[f"--user-data-dir={profile}", "--window-size=1600,1000", f"--virtual-time-budget={budget}"],
            *["--dump-dom", url],
        ]
        dom = subprocess.run(command, capture_output=True, text=True, timeout=240).stdout
        text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
        text = re.sub(r"\s+", " ", text) + " " + dom  # attributes (links) stay searchable
        if all(item in text for item in expected):
            break
    return text


@pytest.fixture(scope="module")
def study(module_dir):
    """A pretraining on shapes and a fine-tune of it on other shapes, in one SQLite store."""
    root = module_dir
    uri = f"sqlite:///{root}/mlflow.db"
    common = [*FAST, "trainer.max_epochs=1", f"logger.tracking_uri={uri}", "logger.experiment_name=ui"]
    train(compose_config(common, root / "pretrain"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ui").experiment_id
    (source,) = client.search_runs([experiment])
    finetune = [*common, "stage=finetune", "data=synthetic_target", f"init.weights=runs:/{source.info.run_id}"]
    train(compose_config(finetune, root / "finetune"))
    tuned = next(r for r in client.search_runs([experiment]) if r.info.run_id != source.info.run_id)
    return root, uri, experiment, client.get_run(source.info.run_id), client.get_run(tuned.info.run_id)


def _datasets(run) -> list[str]:
    return [f"{d.dataset.name} ({d.dataset.digest})" for d in run.inputs.dataset_inputs]


def test_the_ui_lists_the_runs_with_their_datasets_and_links_a_fine_tune_to_its_source(chromium, study, tmp_path):
    root, uri, experiment, source, tuned = study
    assert source.info.run_name != tuned.info.run_name
    with mlflow_server(uri, root / "served") as server:
        runs_page = f"{server}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        expected = [source.info.run_name, tuned.info.run_name, *_datasets(source), *_datasets(tuned)[:1]]
        table = _page_text(chromium, runs_page, tmp_path / "profile-runs", expected)
        for item in expected:
            assert item in table, f"{item!r} is not on the runs page"
        # the model-training view: its navigation (GenAI mode's lists Judges and Evaluation runs instead)
        assert "Model registry" in table and "Judges" not in table and "Evaluation runs" not in table

        # the fine-tune's page, at the URL transfuse prints: its description links the source run by name
        page = f"{server}/" + RUN_PAGE.format(experiment_id=experiment, run_id=tuned.info.run_id)
        link = RUN_PAGE.format(experiment_id=experiment, run_id=source.info.run_id)
        text = _page_text(chromium, page, tmp_path / "profile-run", [f'href="{link}"'])
    assert re.search(rf'href="{re.escape(link)}"[^>]*>\s*{re.escape(source.info.run_name)}\s*<', text), text[-2000:]
    assert tuned.info.run_name in text and _datasets(tuned)[0] in text
