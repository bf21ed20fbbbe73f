#!/usr/bin/env bash
# multi_source: does fusing source datasets beat the best single source? Targets digits and mnist_m; sources the
# other digit domains (mnist5k, syn_digits, digits, mnist_m). For each target: every single source, and the mix of
# all other sources (data=mix, leave-one-domain-out: the target held out of training and validation), first
# zero-shot on the target, then fine-tuned on 10 target labels per class; a from-scratch baseline on the same
# labels. 3 seeds; timm's tiny test ResNet, 100 training images per class and source, 8 source epochs, 10
# fine-tuning epochs. About 30 minutes on a 2-core CPU shared with other jobs. Run from the repository root with
# the project installed.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
# one thread per process: on a shared 2-core machine two threads per step ran several times slower
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none test_last=false trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"
others() { case $1 in digits) echo mnist5k,syn_digits,mnist_m ;; mnist_m) echo mnist5k,syn_digits,digits ;; esac; }

# 1. every domain as a single source (each is a source for the other target)
transfuse-train -m experiment=multi_source/source data=mnist5k,syn_digits,digits,mnist_m $COMMON
# 2. the mix of all domains but the target, tested zero-shot on the held-out target (leave-one-domain-out)
transfuse-train -m experiment=multi_source/mix target=digits,mnist_m $COMMON
for target in digits mnist_m; do
  # 3. each single source's model tested on the target as it is (zero-shot)
  transfuse-train -m experiment=multi_source/zero_shot data=$target source="$(others $target)" $COMMON
  # 4. few-label fine-tuning on the target from each single source, from the mix, and from scratch
  transfuse-train -m experiment=multi_source/finetune data=$target source="$(others $target)" $COMMON
  transfuse-train -m experiment=multi_source/finetune data=$target source=mix-$target tags.row=mix_of_others $COMMON
  transfuse-train -m experiment=multi_source/scratch data=$target $COMMON
done

mkdir -p experiments/multi_source/results
for phase in zero_shot finetune; do
  if [ $phase = zero_shot ]; then where="tags.zero_shot = 'true'"; else where="tags.phase = 'finetune'"; fi
  transfuse-report --experiment multi_source --filter "tags.study_run = '$STUDY_RUN' and $where" \
    --rows tags.row --columns tags.target --metric test/acc \
    --order mnist5k,syn_digits,digits,mnist_m,mix_of_others,none \
    --markdown "experiments/multi_source/results/$STUDY_RUN-$phase.md"
done
