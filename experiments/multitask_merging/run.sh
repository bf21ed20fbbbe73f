#!/usr/bin/env bash
# multitask_merging: for each seed, a ResNet-18 pretrained on mnist5k, fine-tuned on each of three digit domains
# (UCI digits, mnist_m, syn_digits), and the three fine-tunes merged into one backbone that keeps each task's
# head: individual, uniform soup, task arithmetic, TIES, Fisher, with BatchNorm statistics re-estimated on the
# three tasks' training images (the default) and averaged. FusionBench's table: one row per method, one column
# per task, their mean and the normalised accuracy. Run from the repository root with the project installed.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
RESULTS=${RESULTS:-$(dirname "$0")/results}
# one thread per process: on a shared 2-core machine two threads per step ran several times slower
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="study_run=$STUDY_RUN trainer.enable_progress_bar=false hydra/job_logging=none hydra/hydra_logging=none"
TRAIN="$COMMON last_checkpoint=none test_last=false"
METHODS="[individual,uniform_soup,task_arithmetic,ties,fisher]"

# one seed after the other, so that a run cut short still leaves whole seeds to report
for seed in ${SEEDS//,/ }; do
  transfuse-train experiment=multitask_merging/source seed=$seed $TRAIN
  transfuse-train -m experiment=multitask_merging/member data=digits,mnist_m,syn_digits seed=$seed $TRAIN
  transfuse-fuse experiment=multitask_merging/merge seed=$seed "fusion_method=$METHODS" +tags.bn=re-estimated $COMMON
  transfuse-fuse experiment=multitask_merging/merge seed=$seed "fusion_method=[uniform_soup,task_arithmetic,ties,fisher]" \
    fusion_method.uniform_soup.reset_bn=false fusion_method.task_arithmetic.reset_bn=false \
    fusion_method.ties.reset_bn=false fusion_method.fisher.reset_bn=false +tags.bn=averaged $COMMON
done

mkdir -p "$RESULTS"
transfuse-report --experiment multitask_merging --filter "tags.study_run = '$STUDY_RUN' and tags.role = 'merge'" \
  --rows tags.bn,tags.method --order re-estimated,averaged \
  --metric test/digits/acc,test/mnist_m/acc,test/syn_digits/acc,test/acc,test/normalized_acc,cost/params \
  --lower-is-better cost/params --markdown "$RESULTS/$STUDY_RUN.md" --csv "$RESULTS/$STUDY_RUN.csv"
