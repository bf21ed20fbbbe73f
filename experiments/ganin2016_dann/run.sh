#!/usr/bin/env bash
# ganin2016_dann, small form: the rows of Ganin et al.'s digit table (source only, DANN, train on target) on
# mnist5k <-> UCI digits, with the configs of experiments/digits_adaptation (its runs, its MLflow experiment).
# digits_adaptation/run.sh runs these plus AdaBN, CORAL and MMD; the measured table came from that script.
# Run from the repository root with the project installed. About 25 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"

for pair in mnist5k:digits digits:mnist5k; do
  source=${pair%%:*} target=${pair##*:}
  # labelled source + unlabelled target images, selected on source validation; test/acc is the target's
  transfuse-train -m experiment=digits_adaptation/adapt data=$source data@target_data=$target \
    adapt=source_only,dann $COMMON
  # train on target: the same training with the target's own labels
  transfuse-train -m experiment=digits_adaptation/adapt data=$target data@target_data=$target adapt=source_only \
    tags.method=oracle "tags.pair='$source->$target'" $COMMON
done

transfuse-report --experiment digits_adaptation \
  --filter "tags.study_run = '$STUDY_RUN' and tags.method != 'adabn' and tags.method != 'coral' and tags.method != 'mmd'" \
  --rows tags.method --columns tags.pair --metric test/acc --order source_only,dann,oracle \
  --markdown "experiments/ganin2016_dann/results/$STUDY_RUN.md"
