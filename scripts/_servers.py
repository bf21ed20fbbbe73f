"""A throw-away PostgreSQL and an ``mlflow server`` over it, on this machine only, for tests and benchmarks.

PostgreSQL comes from the ``pgserver`` wheel (the ``dev`` extras): its binaries need no system package, and as
root it runs ``initdb``/``postgres`` as a user of its own (PostgreSQL refuses to run as root). It listens on a
Unix socket inside its data folder, never on a network address. The server stores artifacts itself
(``--artifacts-destination``), so clients see ``mlflow-artifacts:`` URIs and upload and download through it.

``tests/test_postgres.py`` imports this module as ``scripts._servers``, ``scripts/bench_store.py`` as ``_servers``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: SQLAlchemy 2.1 reads a bare ``postgresql://`` as the psycopg 3 driver; the extras install psycopg2
DRIVER = "postgresql+psycopg2"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be run here (its package is missing or the server does not start)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres(data: Path) -> Iterator[str]:
    """A PostgreSQL server on a new data folder ``data``, yielding its SQLAlchemy URI; stopped and ``data``
    removed on exit.

    Raises:
        Unavailable: ``pgserver`` or the ``psycopg2`` driver is not installed, or the server does not start.
    """
    try:
        with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset (pgserver falls back)
            warnings.simplefilter("ignore")
            import pgserver
        import psycopg2  # noqa: F401  (MLflow's driver: fail here, not inside the tracking server)
    except ImportError as err:
        raise Unavailable(f"{err.name} is not installed (pip install -e '.[dev]')") from None
    data.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(data, cleanup_mode="delete")
    except (subprocess.SubprocessError, OSError, AssertionError) as err:
        shutil.rmtree(data, ignore_errors=True)
        raise Unavailable(f"PostgreSQL did not start in {data}: {err}") from None
    try:
        # pgserver's URI is postgresql://postgres:@/postgres?host=<socket folder>
        yield server.get_uri().replace("postgresql://", f"{DRIVER}://", 1)
    finally:
        server.cleanup()  # pg_ctl stop, then the data folder is removed
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int | None = None, workers: int = 1) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 over ``backend_uri``, storing artifacts under ``artifacts`` (proxied),
    yielding its ``http://`` URI once ``/health`` answers; the server and its workers are killed on exit."""
    import requests

    port = port or free_port()
    log = artifacts.parent / f"mlflow-server-{port}.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        *[sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)],
        *["--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts), "--workers", str(workers)],
    ]
    # no job runner: MLflow would start five huey consumers (for GenAI jobs that transfuse does not use), each
    # importing MLflow in the background and slowing every request for the first 20 s or so on two cores
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a new database is migrated before the server answers
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited with status {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)
