"""Which process of a job this is, read from the environment before any Trainer exists (no torch import).

A DDP job runs the entry point once per process; only rank 0 creates its MLflow run and writes to it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: environment variables that give a process's global rank, in the order Lightning reads them
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
#: how rank 0 tells the other processes of a resumed job which full checkpoint to start from
RESUME_CHECKPOINT_ENV = "TRANSFUSE_RESUME_CHECKPOINT"


def global_rank() -> int:
    """This process's rank in its job (0 when it runs alone), read as Lightning reads it, before any Trainer."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def is_rank_zero() -> bool:
    """Whether this process speaks for the job: creates its run, logs, uploads (the others only compute)."""
    return global_rank() == 0


def started_by_cluster() -> bool:
    """Whether the processes of this job were all started by the cluster (several Slurm tasks, torchrun) rather
    than by rank 0, which then cannot hand them anything through their environment."""
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def shared_checkpoint(path: str | None) -> str | None:
    """The full checkpoint a resumed fit starts from, the same in every process of the job: rank 0 found it and
    hands it to the processes that DDP starts (they inherit its environment); they read it back.

    Processes started by the cluster cannot learn it, and a fit resumed on rank 0 alone would leave the ranks in
    different epochs: there the fit starts over, in the same run.
    """
    if started_by_cluster():
        if path is not None and is_rank_zero():
            log.warning("the cluster started this job's processes: its fit starts over (in the same run)")
        return None
    if is_rank_zero():
        os.environ[RESUME_CHECKPOINT_ENV] = path or ""
        return path
    return os.environ.get(RESUME_CHECKPOINT_ENV) or None
