"""What a command shows: where its run logs, Lightning's progress bar, and a short table of what the run logged;
not the chatter of the libraries underneath.

:func:`quiet_libraries` is called by each entry point at the start of every Hydra job: Hydra configures logging
per job, and a launcher may run the jobs in processes that never ran ``main``. The tables are built here and
logged at INFO by the entry points, so the console shows them on stdout and the job's ``.log`` file keeps them.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import warnings
from collections.abc import Mapping, Sequence

#: library warnings that say nothing a user of transfuse can act on (regular expressions on the message)
QUIET_WARNINGS = (
    # torch deprecates the ``LeafSpec`` check that Lightning's ``_pytree`` still makes on every test and adapt batch
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # a linear probe or a partial fine-tune keeps its frozen modules in eval mode on purpose
    r"Found \d+ module\(s\) in eval mode",
)
#: loggers whose INFO lines are noise; their warnings still show. Lightning: accelerator availability, its
#: litlogger tip, "fit stopped: max_epochs reached", checkpoint paths restored, CUDA_VISIBLE_DEVICES, tensor cores;
#: MLflow: creating and migrating the tables of a new SQLite store.
QUIET_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
    "lightning.pytorch.accelerators.cuda",
    "mlflow.store.db.utils",
)
#: what the result table of a run shows, in this order (``fnmatch`` patterns on the logged metric names)
RESULT_KEYS = (
    "test/acc",
    "test/f1",
    "test/loss",
    "test/ece",
    "test_source/acc",
    "test_last/acc",
    "*_best",
    "transfer/*",
)


class ConsoleFormatter(logging.Formatter):
    """A message as it is, with its level in front above INFO (``WARNING: ...``).

    Hydra's console format repeats a timestamp and a logger name on every line; the job's ``.log`` file keeps them.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno <= logging.INFO else f"{record.levelname}: {message}"


def quiet_libraries() -> None:
    """Silence the libraries' noise (see :data:`QUIET_WARNINGS`, :data:`QUIET_LOGGERS`), hide MLflow's download
    bars, and show Hydra's console lines with :class:`ConsoleFormatter`. Safe to call once per job."""
    # read when MLflow downloads: a user who wants the bars back sets it to true
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning gives its top logger a stderr handler when imported, and its records also reach Hydra's root
    # handler: without this, each of its lines would show twice (it keeps its own handler).
    logging.getLogger("lightning").propagate = False
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(ConsoleFormatter())


def format_rows(rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Rows of equal length as aligned text: the first column left-aligned, the others right-aligned.

    >>> print(format_rows([["", "test/acc"], ["fused", "0.9000"]], indent=""))
           test/acc
    fused    0.9000
    """
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def number(value: float | None) -> str:
    """A metric as the tables print it: four decimals, ``-`` when it was not logged."""
    return "-" if value is None else f"{value:.4f}"


def result_table(title: str, metrics: Mapping[str, float]) -> str:
    """``title`` and a ``name value`` line for each metric matched by :data:`RESULT_KEYS`, in that order;
    just the title when there is none."""
    names: list[str] = []
    for pattern in RESULT_KEYS:
        names += [name for name in sorted(metrics) if fnmatch.fnmatchcase(name, pattern) and name not in names]
    if not names:
        return title
    return f"{title}\n" + format_rows([[name, number(metrics[name])] for name in names])


def fusion_table(title: str, metrics: Mapping[str, float], members: Sequence[str]) -> str:
    """``title`` and the fused model's test and val accuracy beside each member's (``members``: their names, in
    the order of ``member/<i>/...``), the member validation would pick, and the members' mean; for a multi-task
    merge, the fused model on each task (``test/<task>/acc``) and no member validation would pick."""
    rows = [["", "test/acc", "val/acc"], ["fused", number(metrics.get("test/acc")), number(metrics.get("val/acc"))]]
    for key in metrics:
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "test" and parts[2] == "acc" and not parts[1].isdigit():
            rows.append([f"  on {parts[1]}", number(metrics[key]), number(metrics.get(f"val/{parts[1]}/acc"))])
    for i, name in enumerate(members):
        test, val = metrics.get(f"member/{i}/test/acc"), metrics.get(f"member/{i}/val/acc")
        rows.append([f"member {i} {name}", number(test), number(val)])
    if "members/best_val/test/acc" in metrics:
        rows.append(["best member by val", number(metrics["members/best_val/test/acc"]), ""])
    rows.append(["member mean", number(metrics.get("members/mean/test/acc")), ""])
    return f"{title}\n{format_rows(rows)}"
