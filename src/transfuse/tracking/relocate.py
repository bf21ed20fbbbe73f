"""Moving a SQLite store: after ``mlflow.db`` and its ``mlartifacts/`` folder are copied elsewhere, point the
store's artifact locations at the new folder.

MLflow records an absolute artifact location per experiment (and per run), so a copied database keeps reading
and writing artifacts in the folder it was copied from. MLflow has no call to change a location, so this
rewrites the three columns that hold them (experiments, runs, logged models) in one SQLite transaction; ids,
metrics and lineage tags are untouched. Only for SQLite: a tracking server keeps its own artifact root.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from transfuse.errors import StoreError
from transfuse.tracking.store import artifact_location, sqlite_path


@dataclass
class Move:
    """One experiment whose artifacts were (or would be) moved."""

    experiment: str
    old: str
    new: str
    copied: bool  # the files were copied from the old folder (the new one did not hold them)


def local_folder(uri: str) -> Path | None:
    """The folder of a ``file://`` URI or plain path; None for remote locations (s3://, mlflow-artifacts:)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(uri)
    return None


def misplaced(tracking_uri: str, experiment_name: str, location: str) -> bool:
    """Whether an experiment of a SQLite store keeps its artifacts outside the store's folder (a copied store)."""
    expected = artifact_location(tracking_uri, experiment_name)
    folder = local_folder(location)
    if expected is None or folder is None:
        return False
    return not folder.resolve().is_relative_to(sqlite_path(tracking_uri).parent)


def _check_artifact_folder(folder: Path, run_ids: set[str], experiment: str) -> None:
    """Refuse to copy a folder that is not this experiment's artifacts: a location read from a store someone else
    wrote could name any folder of this machine (``/home/me/.ssh``), and relocate would copy it into the study."""
    strays = [p.name for p in folder.iterdir() if p.name not in run_ids and p.name != "models"]
    if strays:
        raise StoreError(
            f"experiment {experiment!r} points at {folder}, which holds {', '.join(sorted(strays)[:3])}: not its runs' "
            "artifacts; copy the artifacts beside the store yourself"
        )


def relocate(tracking_uri: str, dry_run: bool = False) -> list[Move]:
    """Point every experiment of a SQLite store whose artifacts live outside the store's folder at
    ``mlartifacts/<experiment>`` beside the database, copying the files there when they are not there yet.

    Raises:
        StoreError: not a SQLite store, or no database at that path.
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        raise StoreError(f"relocate works on a SQLite store (sqlite:///...), not {tracking_uri}")
    if not database.is_file():
        raise StoreError(f"no SQLite store at {database}")
    moves = []
    with sqlite3.connect(database) as db:  # one transaction: committed on success, rolled back on error
        experiments = db.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
        for experiment_id, name, old in experiments:
            if not misplaced(tracking_uri, name, old):
                continue
            new = artifact_location(tracking_uri, name)
            source, target = local_folder(old), local_folder(new)
            copy = target is not None and not target.exists() and source is not None and source.is_dir()
            moves.append(Move(name, old, new, copy))
            if dry_run:
                continue
            if copy:
                known = {
                    row[0] for row in db.execute("SELECT run_uuid FROM runs WHERE experiment_id = ?", (experiment_id,))
                }
                _check_artifact_folder(source, known, name)
                shutil.copytree(source, target, symlinks=True)  # links stay links: nothing outside is read
            prefix = old.rstrip("/")
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, experiment_id))
            for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                    (new.rstrip("/"), len(prefix) + 1, experiment_id, len(prefix), prefix),
                )
    return moves
