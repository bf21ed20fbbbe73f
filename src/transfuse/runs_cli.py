"""``transfuse-runs stale``: list the runs left RUNNING by a process that is gone, and mark them KILLED.

A run whose process was killed outright (``kill -9``, a lost node) stays RUNNING in MLflow for ever. This
command finds them by their recorded host and process id, or by a heartbeat older than ``--stale-after``
seconds, prints them, and with ``--mark-killed`` ends them KILLED (a dry run otherwise). Relaunching the
command that started such a run resumes it instead (``resume=true``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from transfuse.errors import TransfuseError
from transfuse.tracking.liveness import STALE_AFTER_S, abandoned
from transfuse.tracking.query import experiment_ids

PROG = "transfuse-runs"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    stale = sub.add_parser("stale", help="list (and with --mark-killed, end) runs whose process is gone")
    stale.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable; default all)")
    stale.add_argument("--stale-after", type=float, default=STALE_AFTER_S, help="heartbeat age in seconds")
    stale.add_argument("--mark-killed", action="store_true", help="end the stale runs KILLED (default: dry run)")
    stale.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    return p


def stale_runs(tracking_uri: str, experiments: Sequence[str], stale_after_s: float) -> list[tuple[object, str]]:
    """(run, why it is stale) for every RUNNING run of the experiments whose process is gone."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = experiment_ids(client, experiments)
    runs = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=50000) if ids else []
    found = []
    for run in runs:
        reason = abandoned(run, stale_after_s=stale_after_s)
        if reason and run.info.status == "RUNNING":
            found.append((run, reason))
    return found


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        found = stale_runs(args.tracking_uri, args.experiment, args.stale_after)
    except TransfuseError as err:
        raise SystemExit(f"{PROG}: error: {err}") from None
    for run, reason in found:
        print(f"{run.info.run_id}  {run.info.run_name}  stale: {reason}")
    if not found:
        print("no stale run")
    elif args.mark_killed:
        from mlflow import MlflowClient

        client = MlflowClient(args.tracking_uri)
        for run, reason in found:
            client.set_tag(run.info.run_id, "error", f"marked KILLED by {PROG}: {reason}")
            client.set_terminated(run.info.run_id, "KILLED")
        print(f"{len(found)} run(s) marked KILLED")
    else:
        print(f"dry run: {PROG} stale --mark-killed ends them KILLED", file=sys.stderr)


if __name__ == "__main__":
    main()
