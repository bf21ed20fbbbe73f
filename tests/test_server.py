"""transfuse against a real ``mlflow server`` on 127.0.0.1: a server down at start is one line within 30 s; a
server stopped and restarted mid-fit loses no point and does not stall training."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import FAST, last_line, run_cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(root: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/server.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("mlflow server did not start")


def _stop(server: subprocess.Popen) -> None:
    import os
    import signal

    os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, as a crash would
    server.wait(timeout=30)


def test_a_server_down_at_start_is_one_line_within_30_s(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    result = run_cli("transfuse.train", [*FAST, f"logger.tracking_uri={uri}"], tmp_path)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith(f"transfuse-train: error: tracking server {uri} is unreachable")
    assert elapsed < 30, elapsed
    print(f"server down at start: the error line after {elapsed:.1f} s")


def test_a_server_restarted_mid_fit_loses_no_point(tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    slow = [
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.epoch=2",
        "+callbacks.slow.seconds=0.3",
    ]
    args = [*FAST, "trainer.max_epochs=12", "data.batch_size=12", f"logger.tracking_uri={uri}", *slow]
    env = {"PYTHONPATH": str(ROOT)}
    try:
        steady = run_cli(
            "transfuse.train",
            [*args, f"+callbacks.slow.marker={tmp_path / 'a'}", "logger.experiment_name=steady"],
            tmp_path,
            env,
        )
        assert steady.returncode == 0, steady.stderr[-2000:]
        import os

        command = [
            sys.executable,
            "-m",
            "transfuse.train",
            *args,
            f"+callbacks.slow.marker={tmp_path / 'b'}",
            "logger.experiment_name=outage",
        ]
        fit = subprocess.Popen(
            command, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while not (tmp_path / "b").exists():
            assert fit.poll() is None, fit.stderr.read()[-2000:]
            time.sleep(0.1)
        _stop(server)
        time.sleep(4)
        server = _start_server(tmp_path, port)
        stdout, stderr = fit.communicate(timeout=300)
        assert fit.returncode == 0, stderr[-2000:]
        warnings = [line for line in (stdout + stderr).splitlines() if "unreachable" in line]
        assert len(warnings) == 1, stdout[-3000:]  # one warning line said so
        print(warnings[0])
    finally:
        _stop(server) if server.poll() is None else None
    server = _start_server(tmp_path, port)
    try:
        client = MlflowClient(uri)
        (a,) = client.search_runs([client.get_experiment_by_name("steady").experiment_id])
        (b,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        assert b.info.status == "FINISHED"
        lost = 0
        for key in a.data.metrics:
            if key.startswith("time/"):
                continue
            want = sorted(m.step for m in client.get_metric_history(a.info.run_id, key))
            got = sorted(m.step for m in client.get_metric_history(b.info.run_id, key))
            lost += len(want) - len(got)
            assert got == want, key
        slowdown = b.data.metrics["time/fit_s"] / a.data.metrics["time/fit_s"]
        # the slowdown is printed, not asserted: on two shared cores the server's restart itself takes CPU time
        print(f"outage mid-fit: {lost} points lost, fit {slowdown:.3f}x the time without the outage")
    finally:
        _stop(server)
