"""Does a transferability score rank candidate sources the way fine-tuning does?

Reads one study run of ``source_ranking`` back from MLflow: each candidate's ``transfer/logme`` and
``transfer/leep`` (from its ``stage=score`` run) and the mean target ``test/acc`` of its fine-tuned runs, and
prints a Markdown table with the rank correlations (Kendall's tau, Spearman's rho) between each score and
the fine-tuned accuracy, and whether the score's top candidate is the fine-tuned best.

Usage::

    python experiments/source_ranking/rank.py --study-run <id> [--markdown out.md]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from mlflow import MlflowClient
from scipy.stats import kendalltau, spearmanr

from transfuse.report import DEFAULT_URI, fetch_runs, summarise

SCORES = ("transfer/logme", "transfer/leep")


def table(client: MlflowClient, study_run: str) -> str:
    where = f"tags.study_run = '{study_run}'"
    scored = fetch_runs(client, ["source_ranking"], f"{where} and tags.role = 'score'")
    tuned = summarise(
        fetch_runs(client, ["source_ranking"], f"{where} and tags.role = 'finetune'"), ["tags.candidate"], "test/acc"
    )
    if not scored or not tuned:
        raise SystemExit(f"rank.py: error: no score or fine-tune runs of study run {study_run!r}")
    scores = {run.data.tags["candidate"]: run.data.metrics for run in scored}
    accuracy = {g.key[0]: g for g in tuned}
    candidates = sorted(set(scores) & set(accuracy), key=lambda c: -accuracy[c].mean)
    lines = [
        "| candidate | transfer/logme | transfer/leep | fine-tuned test/acc (mean ± std) | n |",
        "|---|---|---|---|---|",
    ]
    for c in candidates:
        logme, leep = (scores[c].get(k, math.nan) for k in SCORES)
        g = accuracy[c]
        leep_cell = f"{leep:.4f}" if not math.isnan(leep) else "n/a (other classes)"
        lines.append(f"| {c} | {logme:.4f} | {leep_cell} | {g.mean:.4f} ± {g.std:.4f} | {g.n} |")
    lines += [
        "",
        "| score | candidates | Kendall's tau | Spearman's rho | picks the fine-tuned best |",
        "|---|---|---|---|---|",
    ]
    for key in SCORES:
        have = [c for c in candidates if not math.isnan(scores[c].get(key, math.nan))]
        if len(have) < 3:
            continue
        x, y = [scores[c][key] for c in have], [accuracy[c].mean for c in have]
        tau, rho = kendalltau(x, y).statistic, spearmanr(x, y).statistic
        picked = max(have, key=lambda c: scores[c][key])
        verdict = "yes" if picked == have[0] else f"no (picks {picked})"
        lines.append(f"| {key} | {len(have)} | {tau:.2f} | {rho:.2f} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-run", required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    args = parser.parse_args()
    text = table(MlflowClient(args.tracking_uri), args.study_run)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
