"""Which process of a job this is, read from the environment before any Trainer exists (no torch import).

A DDP job runs the entry point once per process; only rank 0 creates its MLflow run and writes to it.
"""

from __future__ import annotations

import os

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


def shared_checkpoint(path: str | None) -> str | None:
    """The full checkpoint a resumed fit starts from, the same in every process of the job: rank 0 found it and
    hands it to the processes that DDP starts (they inherit its environment); they read it back."""
    if is_rank_zero():
        os.environ[RESUME_CHECKPOINT_ENV] = path or ""
        return path
    return os.environ.get(RESUME_CHECKPOINT_ENV) or None
