#!/usr/bin/env bash
# compression of a fused model: the digits_soups distilled student (one ResNet-18 trained on the logit ensemble
# of six fine-tunes, 10 digits labels per class) pruned like the base model of run.sh: channel and magnitude
# pruning at ratios 0 (the student as it is), 0.25, 0.5, 0.75 and 0.9, tested as pruned and after EPOCHS (20)
# epochs of fine-tuning on the student's own 100 training labels (about the 150 steps of run.sh's 3 epochs on
# 1,078 images). One student, seed 0 (the digits_soups recipe). STUDENT=<run id> prunes an existing student
# instead of training one. Run from the repository root with the project installed.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-student-$(date +%Y%m%d-%H%M%S)}
RATIOS=${RATIOS:-0,0.25,0.5,0.75,0.9}
EPOCHS=${EPOCHS:-20}
RESULTS=${RESULTS:-$(dirname "$0")/results}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="study_run=$STUDY_RUN trainer.enable_progress_bar=false hydra/job_logging=none hydra/hydra_logging=none"
TRAIN="$COMMON last_checkpoint=none test_last=false"

# 1. the student, as digits_soups/run.sh makes it: source a, six members, distillation from source a
if [ -z "${STUDENT:-}" ]; then
  transfuse-train experiment=digits_soups/source source=a seed=0 $TRAIN
  transfuse-train -m experiment=digits_soups/member source=a optimizer.lr=1e-4,3e-4,1e-3 seed=0,1 $TRAIN
  transfuse-fuse experiment=digits_soups/fuse fusion_method=distill \
    "fusion_method.distill.student_init=\"tags.role = 'source' and tags.source = 'a' and tags.study_run = '$STUDY_RUN'\"" $COMMON
  STUDENT=$(transfuse-runs list --experiment digits_soups --limit 1 --ids \
    --filter "tags.method = 'distill' and tags.study_run = '$STUDY_RUN'")
fi

# 2. prune it, on the data it was trained on (10 labels per class, seed 0's subset)
transfuse-train -m experiment=compression/prune init.weights=runs:/$STUDENT compress=channel,magnitude \
  compress.ratio=$RATIOS stage.fit=false,true data.train_per_class=10 data.batch_size=16 seed=0 \
  trainer.max_epochs=$EPOCHS tags.role=pruned_student $TRAIN

mkdir -p "$RESULTS"
transfuse-report --experiment compression --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method,tags.finetuned,tags.ratio --order channel,magnitude \
  --metric test/acc,cost/flops,cost/nonzero_params,cost/latency_ms_b256 \
  --lower-is-better cost/flops,cost/nonzero_params,cost/latency_ms_b256 \
  --markdown "$RESULTS/$STUDY_RUN.md" --csv "$RESULTS/$STUDY_RUN.csv"
transfuse-report --experiment compression --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method,tags.finetuned --columns tags.ratio --order channel,magnitude --metric test/acc \
  --markdown "$RESULTS/$STUDY_RUN-curve.md" --curve "$RESULTS/$STUDY_RUN-acc.png"
