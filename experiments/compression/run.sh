#!/usr/bin/env bash
# compression: accuracy against FLOPs when a digits model is pruned. A ResNet-18 trained on UCI digits (32 px,
# all 1,078 training images, 10 epochs), then channel pruning (structured: a narrower network) and magnitude
# pruning (unstructured: zeros, same FLOPs) at ratios 0.25, 0.5, 0.75 and 0.9, each tested as pruned and after
# 3 epochs of fine-tuning. 17 runs per seed. Run from the repository root with the project installed.
# All runs of one invocation share a study_run tag, so the tables read exactly these runs.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
RATIOS=${RATIOS:-0.25,0.5,0.75,0.9}
RESULTS=${RESULTS:-$(dirname "$0")/results}
# one thread per process: on a shared 2-core machine two threads per step ran several times slower
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="study_run=$STUDY_RUN last_checkpoint=none test_last=false trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"
# EXTRA: overrides added to every command, e.g. a study store: EXTRA="logger.tracking_uri=sqlite:////tmp/c.db"
COMMON="$COMMON ${EXTRA:-}"

# one seed after the other, so that a run cut short still leaves whole seeds to report
for seed in ${SEEDS//,/ }; do
  # 1. the model to compress
  transfuse-train experiment=compression/base seed=$seed $COMMON
  # 2. both methods at every ratio, tested as pruned (stage.fit=false) and after 3 fine-tuning epochs (true)
  transfuse-train -m experiment=compression/prune compress=channel,magnitude compress.ratio=$RATIOS \
    stage.fit=false,true seed=$seed $COMMON
done

# 3. the table, and test accuracy against the ratio (--curve needs a numeric column key: the ratio, not the FLOPs,
#    which the table gives per ratio), read back from MLflow
URI=()
for arg in ${EXTRA:-}; do case $arg in logger.tracking_uri=*) URI=(--tracking-uri "${arg#*=}") ;; esac; done
mkdir -p "$RESULTS"
transfuse-report "${URI[@]}" --experiment compression --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method,tags.finetuned,tags.ratio --order none,channel,magnitude \
  --metric test/acc,cost/flops,cost/nonzero_params,cost/latency_ms_b256 \
  --lower-is-better cost/flops,cost/nonzero_params,cost/latency_ms_b256 \
  --markdown "$RESULTS/$STUDY_RUN.md" --csv "$RESULTS/$STUDY_RUN.csv"
transfuse-report "${URI[@]}" --experiment compression --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method,tags.finetuned --columns tags.ratio --order none,channel,magnitude --metric test/acc \
  --markdown "$RESULTS/$STUDY_RUN-curve.md" --curve "$RESULTS/$STUDY_RUN-acc.png"
