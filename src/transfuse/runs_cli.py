"""``transfuse-runs``: what the tracking store holds, and clean-up of runs left RUNNING by a process that is gone.

``experiments`` lists each experiment with its runs per status; ``list`` prints runs newest first (name, stage,
data, method, status, a metric, the run they started from), or with ``--ids`` only their full ids, for a shell
variable: ``RUN=$(transfuse-runs list --experiment digits_transfer --filter "tags.stage = 'pretrain'" --limit 1
--ids)``.

``stale``: a run whose process was killed outright (``kill -9``, a lost node) stays RUNNING in MLflow for ever.
This finds them by their recorded host and process id, or by a heartbeat older than ``--stale-after`` seconds,
prints them, and with ``--mark-killed`` ends them KILLED (a dry run otherwise). Relaunching the command that
started such a run resumes it instead (``resume=true``).

``relocate``: MLflow records absolute artifact folders, so a copied ``mlflow.db`` keeps writing into the folder it
was copied from; this points a copied SQLite store's experiments at ``mlartifacts/`` beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from transfuse.errors import TransfuseError
from transfuse.tracking.listing import STATUSES
from transfuse.tracking.liveness import STALE_AFTER_S, abandoned
from transfuse.tracking.query import experiment_ids

PROG = "transfuse-runs"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    experiments = sub.add_parser("experiments", help="list the experiments, with their runs per status")
    experiments.add_argument("--tracking-uri", default=uri)
    listing = sub.add_parser(
        "list",
        help="list runs, newest first",
        description="Runs newest first: short id, name, stage, data, method, status, a metric, the run it started "
        "from. With --ids, only full ids, e.g. RUN=$(transfuse-runs list --experiment digits_transfer --filter "
        "\"tags.stage = 'pretrain'\" --limit 1 --ids)",
    )
    listing.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable; default all)")
    listing.add_argument("--filter", default="", help="MLflow filter, e.g. \"tags.stage = 'pretrain'\"")
    listing.add_argument("--status", type=str.upper, choices=STATUSES, help="only runs of this status")
    listing.add_argument("--limit", type=_positive, default=20, help="the newest this many runs (default 20)")
    listing.add_argument("--metric", default="test/acc", help="the metric shown (default test/acc)")
    listing.add_argument("--ids", action="store_true", help="print only the full run ids, one per line")
    listing.add_argument("--tracking-uri", default=uri)
    stale = sub.add_parser("stale", help="list (and with --mark-killed, end) runs whose process is gone")
    stale.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable; default all)")
    stale.add_argument("--stale-after", type=float, default=STALE_AFTER_S, help="heartbeat age in seconds")
    stale.add_argument("--mark-killed", action="store_true", help="end the stale runs KILLED (default: dry run)")
    stale.add_argument("--tracking-uri", default=uri)
    register = sub.add_parser("register", help="register a run's model (logger.log_model=true) under a name")
    register.add_argument("run_id", help="the run that logged the model")
    register.add_argument("--name", required=True, help="registered model name (a new version when it exists)")
    register.add_argument("--tracking-uri", default=uri)
    move = sub.add_parser(
        "relocate",
        help="after copying a SQLite store (mlflow.db with its mlartifacts/), keep its artifacts beside the copy",
    )
    move.add_argument("--dry-run", action="store_true", help="only say what would move")
    move.add_argument("--tracking-uri", default=uri)
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


def list_experiments(args: argparse.Namespace) -> None:
    from mlflow import MlflowClient

    from transfuse.tracking.listing import check_store_exists, experiments, format_experiments

    check_store_exists(args.tracking_uri)
    print(format_experiments(experiments(MlflowClient(args.tracking_uri))))


def list_runs(args: argparse.Namespace) -> None:
    """Print the runs ``args`` select; with ``--ids`` nothing but their ids (and an error when there is none, so
    that a shell script stops rather than go on with an empty id)."""
    from mlflow import MlflowClient

    from transfuse.tracking import listing

    listing.check_store_exists(args.tracking_uri)
    client = MlflowClient(args.tracking_uri)
    runs = listing.list_runs(client, args.experiment, args.filter, args.status, args.limit)
    if args.ids:
        if not runs:
            where = f" in {', '.join(map(repr, args.experiment))}" if args.experiment else ""
            status = f" {args.status}" if args.status else ""
            raise TransfuseError(f"no{status} run{where} matches{' that --filter' if args.filter.strip() else ''}")
        print("\n".join(run.info.run_id for run in runs))
        return
    names = None if len(args.experiment) == 1 else listing.experiment_names(client)
    print(listing.format_runs(runs, args.metric, names))


def mark_stale(args: argparse.Namespace) -> None:
    found = stale_runs(args.tracking_uri, args.experiment, args.stale_after)
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


def relocate_store(args: argparse.Namespace) -> None:
    from transfuse.tracking.relocate import relocate

    moves = relocate(args.tracking_uri, dry_run=args.dry_run)
    for move in moves:
        how = " (files copied from the old folder)" if move.copied else ""
        print(f"{move.experiment}: {move.old} -> {move.new}{how}")
    if not moves:
        print("every experiment keeps its artifacts beside the store: nothing to move")
    elif args.dry_run:
        print(f"dry run: {PROG} relocate without --dry-run moves them", file=sys.stderr)


def register_model(args: argparse.Namespace) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from transfuse.tracking.artifacts import MODEL_TAG

    client = MlflowClient(args.tracking_uri)
    try:
        run = client.get_run(args.run_id)
    except MlflowException:
        raise TransfuseError(f"no MLflow run with id {args.run_id!r} in {args.tracking_uri}") from None
    model_id = run.data.tags.get(MODEL_TAG)
    if not model_id:
        raise TransfuseError(
            f"run {args.run_id} ({run.info.run_name}) logged no model: train it with logger.log_model=true"
        )
    mlflow.set_tracking_uri(args.tracking_uri)
    version = mlflow.register_model(f"models:/{model_id}", args.name)
    uri = f"models:/{args.name}/{version.version}"
    print(f"registered {args.name} version {version.version} ({uri}) from run {args.run_id}")


COMMANDS = {
    "experiments": list_experiments,
    "list": list_runs,
    "stale": mark_stale,
    "relocate": relocate_store,
    "register": register_model,
}


def main(argv: Sequence[str] | None = None) -> None:
    """The command: every error a user can fix exits with one line ``transfuse-runs: error: ...``."""
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except TransfuseError as err:
        raise SystemExit(f"{PROG}: error: {err}") from None


if __name__ == "__main__":
    main()
