"""Does a transferability score rank candidate sources the way fine-tuning does?

Reads one study run of ``source_ranking`` back from MLflow. A score run and a fine-tune run share a candidate, a
target (``labels_per_class`` tag) and a seed (which also draws the target's labelled subset), so each score is
paired with the fine-tuned accuracy on the same images. Per target it prints each candidate's scores and
fine-tuned ``test/acc`` (means over seeds), then per score and target the rank correlations with the accuracy
(Kendall's tau-b, Spearman's rho) with a 95 % bootstrap interval, and whether the score's top candidate is the
fine-tuned best.

The bootstrap resamples, in each replicate, the seeds (paired: a seed's score with the same seed's accuracy)
and the candidates, both with replacement, so the interval covers the noise of fine-tuning and the choice of
this small zoo. The ``mean of the targets`` row averages the per-target correlations within each replicate.

Usage::

    python experiments/source_ranking/rank.py --study-run <id> [--markdown out.md] [--replicates 2000]
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from scipy.stats import kendalltau, spearmanr

from transfuse.report import DEFAULT_URI, fetch_runs

#: the metrics of ``transfuse.transferability.score_model``; LEEP and NCE need the source head
SCORES = (
    "transfer/logme",
    "transfer/logme_exact",
    "transfer/hscore",
    "transfer/knn",
    "transfer/leep",
    "transfer/nce",
)
HEAD_SCORES = ("transfer/leep", "transfer/nce")

# target -> candidate -> seed -> value
Table = dict[str, dict[str, dict[str, float]]]


def _collect(runs: list, metric: str) -> Table:
    out: Table = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        value = run.data.metrics.get(metric)
        if value is not None:
            tags = run.data.tags
            out[tags.get("labels_per_class", "10")][tags["candidate"]][tags.get("seed", "0")] = value
    return out


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


def _correlations(x: list[float], y: list[float]) -> tuple[float, float]:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    return float(kendalltau(x, y).statistic), float(spearmanr(x, y).statistic)


def bootstrap(
    score: dict[str, dict[str, float]], accuracy: dict[str, dict[str, float]], replicates: int, seed: int = 0
) -> np.ndarray:
    """[replicates, 2] tau and rho with candidates and seeds resampled (NaN where a replicate is degenerate)."""
    rng = np.random.default_rng(seed)
    candidates = sorted(set(score) & set(accuracy))
    seeds = sorted(set.intersection(*(set(score[c]) & set(accuracy[c]) for c in candidates)))
    s = np.array([[score[c][k] for k in seeds] for c in candidates])  # [C, S]
    a = np.array([[accuracy[c][k] for k in seeds] for c in candidates])
    out = np.full((replicates, 2), math.nan)
    for r in range(replicates):
        cs = rng.integers(len(candidates), size=len(candidates))
        ks = rng.integers(len(seeds), size=len(seeds))
        x, y = s[np.ix_(cs, ks)].mean(1), a[np.ix_(cs, ks)].mean(1)
        out[r] = _correlations(x.tolist(), y.tolist())
    return out


def _interval(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return "n/a"
    low, high = np.percentile(values, [2.5, 97.5])
    return f"[{low:.2f}, {high:.2f}]"


def table(client: MlflowClient, study_run: str, replicates: int = 2000) -> str:
    where = f"tags.study_run = '{study_run}'"
    scored = fetch_runs(client, ["source_ranking"], f"{where} and tags.role = 'score'")
    tuned = fetch_runs(client, ["source_ranking"], f"{where} and tags.role = 'finetune'")
    if not scored or not tuned:
        raise SystemExit(f"rank.py: error: no score or fine-tune runs of study run {study_run!r}")
    accuracy = _collect(tuned, "test/acc")
    scores = {key: _collect(scored, key) for key in SCORES}
    targets = sorted(accuracy, key=int)
    lines = []
    for target in targets:
        acc = accuracy[target]
        candidates = sorted(set(acc) & set(scores["transfer/logme"][target]), key=lambda c: -_mean(acc[c]))
        lines += [
            f"Target: UCI digits, {target} labels per class (means over seeds)",
            "",
            "| candidate | " + " | ".join(SCORES) + " | fine-tuned test/acc (mean ± std) | n |",
            "|---|" + "---|" * len(SCORES) + "---|---|",
        ]
        for c in candidates:
            cells = []
            for key in SCORES:
                value = _mean(scores[key][target].get(c, {}))
                cells.append("n/a (other classes)" if math.isnan(value) and key in HEAD_SCORES else f"{value:.4f}")
            values = list(acc[c].values())
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            lines.append(f"| {c} | " + " | ".join(cells) + f" | {np.mean(values):.4f} ± {std:.4f} | {len(values)} |")
        lines.append("")

    lines += [
        "| score | candidates | labels per class | Kendall's tau [95% CI] | Spearman's rho [95% CI] "
        "| picks the fine-tuned best |",
        "|---|---|---|---|---|---|",
    ]
    for key in SCORES:
        pooled, points = [], []
        for target in targets:
            acc, score = accuracy[target], scores[key][target]
            have = sorted(set(acc) & set(score), key=lambda c: -_mean(acc[c]))
            if len(have) < 3:
                continue
            x, y = [_mean(score[c]) for c in have], [_mean(acc[c]) for c in have]
            tau, rho = _correlations(x, y)
            boot = bootstrap({c: score[c] for c in have}, {c: acc[c] for c in have}, replicates)
            pooled.append(boot)
            points.append((tau, rho))
            picked = max(have, key=lambda c: _mean(score[c]))
            verdict = "yes" if picked == have[0] else f"no (picks {picked})"
            lines.append(
                f"| {key} | {len(have)} | {target} | {tau:.2f} {_interval(boot[:, 0])} "
                f"| {rho:.2f} {_interval(boot[:, 1])} | {verdict} |"
            )
        if len(pooled) > 1:
            with warnings.catch_warnings():  # a replicate degenerate in every target stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.stack(pooled), axis=0)  # [replicates, 2], each replicate averaged over targets
            point = np.mean(points, axis=0)
            lines.append(
                f"| {key} | | mean of the targets | {point[0]:.2f} {_interval(mean[:, 0])} "
                f"| {point[1]:.2f} {_interval(mean[:, 1])} | |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-run", required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    args = parser.parse_args()
    text = table(MlflowClient(args.tracking_uri), args.study_run, args.replicates)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
