"""A copied SQLite store: new runs warn that artifacts live in the old folder, and relocate points them home."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from transfuse.errors import StoreError
from transfuse.runs_cli import main as runs_main
from transfuse.tracking.relocate import local_folder, relocate
from transfuse.tracking.run import tracked_run


def make_study(folder: Path, tracking_uri: str) -> str:
    """A store in ``folder`` with one run that holds one artifact; returns the run id."""
    with tracked_run(tracking_uri, "study", "member") as run:
        run.client.log_text(run.run_id, "weights", "checkpoints/best.txt")
    return run.run_id


def test_a_copied_store_warns_then_relocate_moves_artifacts_beside_it(tmp_path, tracking_uri, caplog):
    old = tmp_path
    run_id = make_study(old, tracking_uri)
    new = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(old, new)
    copied_uri = f"sqlite:///{new}/mlflow.db"

    with caplog.at_level(logging.WARNING), tracked_run(copied_uri, "study", "after-copy") as before:
        pass
    assert "outside this store's folder" in caplog.text
    stray = MlflowClient(copied_uri).get_run(before.run_id).info.artifact_uri
    assert local_folder(stray).is_relative_to(old)  # what the issue saw: the copy writes into the original

    moves = relocate(copied_uri)
    assert ("study", False) in [(m.experiment, m.copied) for m in moves]  # the copy already held the files
    client = MlflowClient(copied_uri)
    experiment = client.get_experiment_by_name("study")
    assert local_folder(experiment.artifact_location) == new / "mlartifacts" / "study"
    for run in client.search_runs([experiment.experiment_id]):
        assert local_folder(run.info.artifact_uri).is_relative_to(new), run.info.artifact_uri

    shutil.rmtree(old / "mlartifacts")  # the original folder is gone: the copy stands alone
    local = client.download_artifacts(run_id, "checkpoints/best.txt", str(tmp_path.parent / "dl"))
    assert Path(local).read_text() == "weights"
    caplog.clear()
    with caplog.at_level(logging.WARNING), tracked_run(copied_uri, "study", "after-relocate") as after:
        after.client.log_text(after.run_id, "x", "note.txt")
    assert "outside this store's folder" not in caplog.text
    assert local_folder(client.get_run(after.run_id).info.artifact_uri).is_relative_to(new)
    assert relocate(copied_uri) == []  # a second call has nothing to do


def test_relocate_copies_files_the_new_folder_lacks_and_dry_run_changes_nothing(tmp_path, tracking_uri, capsys):
    run_id = make_study(tmp_path, tracking_uri)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-db-only"
    elsewhere.mkdir()
    shutil.copyfile(tmp_path / "mlflow.db", elsewhere / "mlflow.db")  # the database alone, artifacts left behind
    uri = f"sqlite:///{elsewhere}/mlflow.db"

    runs_main(["relocate", "--tracking-uri", uri, "--dry-run"])
    assert "study" in capsys.readouterr().out
    assert local_folder(MlflowClient(uri).get_experiment_by_name("study").artifact_location).is_relative_to(tmp_path)

    runs_main(["relocate", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert "copied" in out
    local = MlflowClient(uri).download_artifacts(run_id, "checkpoints/best.txt", str(elsewhere / "dl"))
    assert Path(local).read_text() == "weights"
    assert (elsewhere / "mlartifacts" / "study").is_dir()


def test_relocate_refuses_what_is_not_a_sqlite_store(tmp_path):
    with pytest.raises(StoreError, match="SQLite"):
        relocate("http://127.0.0.1:5999")
    with pytest.raises(StoreError, match="no SQLite store"):
        relocate(f"sqlite:///{tmp_path}/nothing/mlflow.db")


def test_relocate_copies_no_folder_that_is_not_the_experiments_artifacts(tmp_path, tracking_uri):
    import sqlite3

    make_study(tmp_path, tracking_uri)
    secrets = tmp_path.parent / f"{tmp_path.name}-secrets"
    secrets.mkdir()
    (secrets / "id_rsa").write_text("private")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-hostile"
    elsewhere.mkdir()
    shutil.copyfile(tmp_path / "mlflow.db", elsewhere / "mlflow.db")
    with sqlite3.connect(elsewhere / "mlflow.db") as db:  # a store someone else wrote, pointing at a private folder
        db.execute("UPDATE experiments SET artifact_location = ? WHERE name = 'study'", (secrets.as_uri(),))
    with pytest.raises(StoreError, match="not its runs' artifacts"):
        relocate(f"sqlite:///{elsewhere}/mlflow.db")
    assert not (elsewhere / "mlartifacts" / "study").exists()
