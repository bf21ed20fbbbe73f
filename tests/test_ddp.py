"""``trainer=ddp`` on a CPU: two gloo processes make one MLflow run, test on the whole split, listen on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

#: three classes of 28 shapes: a test split of 21 images, which two processes cannot share evenly (Lightning's own
#: sampler would pad it to 22 by repeating one image)
DATA = ["data=synthetic", "data.num_classes=3", "data.per_class=28", "backbone=test_resnet", "seed=0"]
TEST_IMAGES = 21
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        children = {child for child, parent in parents.items() if parent == current} - found
        found |= children
        frontier.extend(children)
    return found


def address(hex_address: str) -> str:
    """/proc/net/tcp's ``0100007F:1F90`` (or tcp6's 32-digit form) as an IP address."""
    import ipaddress

    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
    return str(ipaddress.ip_address(words))


def listening_addresses(pids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state that these processes hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(address(fields[1]))
    return found


def test_ddp_on_cpu_is_one_run_with_each_point_once_and_the_whole_test_split(tmp_path, _empty_store):
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    command = [sys.executable, "-m", "transfuse.train", "trainer=ddp", *DATA, "trainer.max_epochs=2"]
    command += ["logger.experiment_name=ddp", "trainer.enable_progress_bar=false", "last_checkpoint=weights"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LOCAL_RANK", "RANK")}
    start = time.monotonic()
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    listening: set[str] = set()
    processes: set[int] = set()
    while job.poll() is None:  # watch the job's processes while they run
        family = descendants(job.pid)
        processes |= family
        listening |= listening_addresses(family)
        time.sleep(0.2)
    output = job.stdout.read()
    seconds = time.monotonic() - start
    assert job.returncode == 0, output[-4000:]
    print(f"DDP fit, 2 processes: {seconds:.1f} s; processes seen {len(processes)}; listening on {sorted(listening)}")

    assert len(processes) >= 2, "the job never started its second process"
    assert listening, "no rendezvous socket was seen"
    assert listening <= LOOPBACK, f"a single-node job listens beyond loopback: {listening}"

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert {e.name for e in client.search_experiments()} == {"ddp", "Default"}
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # rank 1 created nothing
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("train/loss_step", "val/acc", "train/loss_epoch"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps and len(steps) == len(set(steps)), (key, steps)  # each point once
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2  # one per epoch
    assert len(client.get_metric_history(run.info.run_id, "val/acc_best")) == 1
    uploaded = sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoints"))
    assert uploaded == ["checkpoints/best.ckpt", "checkpoints/last.ckpt"]
    assert run.data.metrics["test/images"] == TEST_IMAGES  # each test image once over both processes

    # the same checkpoint tested by one process gives the same numbers
    single = run_cli(
        "transfuse.train",
        ["stage=evaluate", *DATA, f"init.weights=runs:/{run.info.run_id}", "logger.experiment_name=check"],
        tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    check = client.search_runs([client.get_experiment_by_name("check").experiment_id])[0]
    assert check.data.metrics["test/images"] == TEST_IMAGES
    assert check.data.metrics["test/acc"] == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)
    assert check.data.metrics["test/loss"] == pytest.approx(run.data.metrics["test/loss"], rel=1e-4)
