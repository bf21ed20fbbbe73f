"""The DDP strategy behind ``trainer=ddp``: several processes, one job.

Lightning's DDP on one node starts the extra processes by running the command line again. Under Hydra that line
is the whole command, so a process of a sweep's job would rerun the sweep; and every process would run the whole
entry point, each opening its own MLflow run. Here the extra processes rerun only this job (its own overrides,
its own output folder), and :func:`transfuse.ranks.is_rank_zero` keeps every write of the tracking code on
rank 0: one job is one MLflow run whatever the number of processes.

A single-node job keeps its rendezvous on the loopback interface: torch's rendezvous store binds the wildcard
address whatever ``MASTER_ADDR`` says, so rank 0 opens the store on a socket it bound to 127.0.0.1 itself, and
gloo and NCCL keep their sockets on ``lo``; nothing listens on the machine's network for the job. A multi-node
job (``trainer.num_nodes``) takes its addresses from the cluster (Slurm sets them) and is left alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher


def job_command(local_rank: int) -> tuple[list[str], str | None]:
    """The command that starts another process of this job: the same entry point and overrides as a single run,
    writing into this job's output folder (Hydra writes no second ``.hydra`` folder there)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    module = f"transfuse.{hc.job.config_name}"  # conf/train.yaml -> transfuse.train, conf/fuse.yaml -> transfuse.fuse
    command = [sys.executable, "-m", module, *hc.overrides.task]
    command += [
        f"hydra.run.dir={hc.runtime.output_dir}",
        f"hydra.job.name=rank_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, hc.runtime.cwd


class JobLauncher(_SubprocessScriptLauncher):
    """Starts the processes of local ranks 1..n-1 with :func:`job_command` instead of rerunning ``sys.argv``."""

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():  # a script or notebook: Lightning's own way
            super()._call_children_scripts()
            return
        self._check_can_spawn_children()
        self.procs = []
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        if self.num_nodes == 1:  # gloo and NCCL would otherwise open their sockets on the host's network address
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        for local_rank in range(1, self.num_processes):
            command, cwd = job_command(local_rank)
            env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            self.procs.append(subprocess.Popen(command, env=env, cwd=cwd))


LOOPBACK = "127.0.0.1"


def loopback_store(rank: int, world_size: int, port: int, timeout: timedelta) -> torch.distributed.TCPStore:
    """The job's rendezvous store, reachable only from this machine (rank 0 serves it, the others connect)."""
    if rank != 0:
        return torch.distributed.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(world_size)
    return torch.distributed.TCPStore(
        LOOPBACK, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach()
    )


class JobDDPStrategy(DDPStrategy):
    """DDP for transfuse jobs: the extra processes rerun this job only, and one node stays on loopback.

    The process group backend follows the device (NCCL on GPUs, gloo on CPUs), as Lightning chooses it.
    """

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = JobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def setup_distributed(self) -> None:
        if self.num_nodes == 1 and not torch.distributed.is_initialized():
            self.set_world_ranks()
            store = loopback_store(self.global_rank, self.world_size, self.cluster_environment.main_port, self._timeout)
            torch.distributed.init_process_group(
                self._get_process_group_backend(),
                store=store,
                rank=self.global_rank,
                world_size=self.world_size,
                timeout=self._timeout,
            )
        super().setup_distributed()  # Lightning's own set-up; it finds the process group ready


def cluster_plugins() -> list:
    """Under Slurm, Lightning's cluster environment without its own SIGUSR1 requeue: transfuse stops the fit,
    uploads its checkpoint and requeues (:class:`transfuse.tracking.resume.Preemption`); two requeues, and
    Lightning's ``hpc_ckpt`` files resumed instead of the run's checkpoint, would fight it."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
