"""Shortened versions of the studies in experiments/: every step runs, links and reports.

Only what holds for any seed and a few epochs is asserted (runs finish, lineage, one row per method);
the accuracies themselves are the studies' business.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from transfuse.report import fetch_runs, summarise
from transfuse.train import train

SHORT = [
    "backbone=test_resnet",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "last_checkpoint=none",
    "study_run=short",
]

STUDIES = {
    "digits_transfer": [
        ("pretrain", []),
        ("source_only", []),
        ("scratch", []),
        ("finetune", ["finetune=linear_probe"]),
        ("finetune", ["finetune=full"]),
    ],
    "digits_finetune": [
        ("source", []),
        ("scratch", ["data.train_per_class=5"]),
        ("finetune", ["finetune=linear_probe", "data.train_per_class=5"]),
        ("finetune", ["finetune=lp_ft", "finetune.probe_epochs=1", "data.train_per_class=5"]),
        ("finetune", ["finetune=partial", "data.train_per_class=5"]),
        ("finetune", ["finetune=l2_sp", "optimizer.weight_decay=0", "data.train_per_class=5"]),
        ("finetune", ["finetune.layer_decay=0.6", "tags.method=layer_decay", "data.train_per_class=5"]),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_shortened_study_runs_end_to_end(make_config, study):
    for experiment, overrides in STUDIES[study]:
        cfg = make_config(f"experiment={study}/{experiment}", *SHORT, *overrides)
        train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    runs = fetch_runs(client, [study])
    assert len(runs) == len(STUDIES[study])  # every step FINISHED
    sources = [r for r in runs if r.data.tags["data"] == "mnist5k"]
    assert len(sources) == 1
    source_run = sources[0].info.run_id
    transfers = [r for r in runs if r.data.tags["stage"] in ("finetune", "evaluate")]
    assert transfers and all(r.data.tags["source_run_id"] == source_run for r in transfers)
    groups = summarise([r for r in runs if r.data.tags["data"] == "digits"], ["tags.method"], "test/acc")
    expected = {o[0].split("=")[1] if o and o[0].startswith("finetune=") else None for _, o in STUDIES[study]}
    methods = {g.key[0] for g in groups}
    assert {m for m in expected if m} <= methods
    assert all(g.n == 1 and 0.0 <= g.mean <= 1.0 for g in groups)
