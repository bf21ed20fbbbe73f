#!/usr/bin/env bash
# ganin2016_dann, small form: the rows of Ganin et al.'s digit table (source only, DANN, train on target) on
# mnist5k <-> UCI digits, with the configs of experiments/digits_adaptation (its runs, its MLflow experiment).
# digits_adaptation/run.sh runs these plus AdaBN, CORAL and MMD; the measured table came from that script.
# Run from the repository root with the project installed. About 25 minutes on a 2-core CPU.
# PAIRS=paper runs only Ganin et al.'s own pairs (mnist5k -> mnist_m, syn_digits -> digits; paper_pairs.yaml, about
# 20 minutes on a 2-core CPU shared with other jobs), PAIRS=small only the mnist5k <-> digits part, default both.
# PAPER_PAIRS picks among the paper's pairs; PAPER_EXTRA adds overrides to their runs, e.g. the longer run of the
# README: PAIRS=paper PAPER_PAIRS=mnist5k:mnist_m \
#   PAPER_EXTRA="trainer.max_epochs=10 data.train_per_class=null target_data.train_per_class=null"
set -euo pipefail
PAIRS=${PAIRS:-both}
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"

if [ "$PAIRS" != paper ]; then
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
fi

if [ "$PAIRS" != small ]; then
# one thread per process: on a shared 2-core machine two threads per step ran several times slower
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for pair in ${PAPER_PAIRS:-mnist5k:mnist_m syn_digits:digits}; do
  source=${pair%%:*} target=${pair##*:}
  # 200 images per class of each domain, except syn_digits (all 500: it learns slowly) and digits (about 107 in train)
  sizes=""
  if [ "$pair" = syn_digits:digits ]; then sizes="data.train_per_class=null target_data.train_per_class=null"; fi
  transfuse-train -m experiment=ganin2016_dann/paper_pairs data=$source data@target_data=$target \
    adapt=source_only,dann $sizes ${PAPER_EXTRA:-} $COMMON
  transfuse-train -m experiment=ganin2016_dann/paper_pairs data=$target data@target_data=$target adapt=source_only \
    tags.method=oracle "tags.pair='$source->$target'" $sizes ${PAPER_EXTRA:-} $COMMON
done
transfuse-report --experiment ganin2016_dann --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method --columns tags.pair --metric test/acc --order source_only,dann,oracle \
  --markdown "experiments/ganin2016_dann/results/paper-pairs-$STUDY_RUN.md"
fi
