"""What both entry points do around Hydra: one line per error, one line per failed sweep job.

Hydra prints a failing job as a stack trace (stripped of its own frames) and, in a multirun, stops at the end of
the batch and shows only the first failed job's error. Here Hydra re-raises (``HYDRA_FULL_ERROR``) and the
entry point decides: an input error (ours or a config Hydra could not compose) is one line; a failed sweep job
prints its own line (:func:`job_failed`), the sweep goes on, and the command exits 1 at the end with a count;
anything else is a bug and keeps its full traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

#: where the jobs of one command append their failure lines (a file each process of a sweep can reach)
FAILED_JOBS_ENV = "TRANSFUSE_FAILED_JOBS"


def job_failed(line: str) -> None:
    """Print a sweep job's failure as one line and record it for the end of the command."""
    print(line, file=sys.stderr, flush=True)
    record = os.environ.get(FAILED_JOBS_ENV)
    if record:
        try:
            with open(record, "a", encoding="utf-8") as out:  # one short append per line: safe across processes
                out.write(line.replace("\n", " ") + "\n")
        except OSError:  # a job on another node without the launching machine's /tmp: its line was printed
            pass


def hydra_error_line(err: BaseException, known: list[str]) -> str | None:
    """One line for a config that Hydra could not compose (typo in a key or an option, bad override syntax),
    naming the nearest known key; None when ``err`` is not such an error."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException):
        first = str(err).splitlines()[0].rstrip(".")
        options = re.findall(r"^\t(\S+)$", str(err), flags=re.MULTILINE)
        choice = re.search(r"Could not find '([^']+)/([^'/]+)'", first)
        if choice and options:
            return f"{choice.group(1)}={choice.group(2)} is not an option; options: {', '.join(options)}"
        return f"{first}; options: {', '.join(options)}" if options else first
    if isinstance(err, OverrideParseException):
        return " ".join(str(err).split())
    if isinstance(err, ConfigCompositionException):
        message = str(err).splitlines()[0]
        typo = re.match(r"Could not override '([^']+)'", message)
        if typo:
            key = typo.group(1)
            near = difflib.get_close_matches(key.split(".")[0], known, n=1)
            hint = f"; did you mean {near[0]}{key[len(key.split('.')[0]) :]}?" if near else ""
            return f"{key} is not a key of the config{hint} (a new key needs +{key}=...)"
        cause = f": {err.__cause__}" if err.__cause__ is not None else ""
        return " ".join(f"{message}{cause}".split())
    return None


def launch(prog: str, root: str, hydra_main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` function as the command ``prog`` (config ``conf/<root>.yaml``); see the module."""
    from transfuse.overrides import root_keys

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; the lines below decide what the user sees
    with tempfile.TemporaryDirectory(prefix="transfuse-jobs-") as folder:
        record = Path(folder) / "failed"
        os.environ[FAILED_JOBS_ENV] = str(record)
        try:
            hydra_main()
        except Exception as err:
            line = hydra_error_line(err, sorted(root_keys(root)))
            if line is None and not record.exists():
                raise
            if line is not None:
                sys.exit(f"{prog}: error: {line}")
            # a sweeper that gives up once its jobs failed (Optuna with no completed trial): the lines above say why
        failed = record.read_text().splitlines() if record.exists() else []
    if failed:
        sys.exit(f"{prog}: {len(failed)} job(s) of the sweep failed (lines above); relaunching the command reruns them")
