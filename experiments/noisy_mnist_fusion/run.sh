#!/usr/bin/env bash
# noisy_mnist_fusion: each single view against early, feature (every fusion head) and late fusion of both
# views on two-view noisy MNIST (Wang et al. 2015), ResNet-18 from scratch, 5 epochs, 3 seeds.
# About 45 minutes on a 2-core CPU (SEEDS=0 for a third of that).
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"

transfuse-train -m experiment=noisy_mnist_fusion/base tags.method=view1_rotated "data.keep_views=[0]" $COMMON
transfuse-train -m experiment=noisy_mnist_fusion/base tags.method=view2_noisy "data.keep_views=[1]" $COMMON
transfuse-train -m experiment=noisy_mnist_fusion/base tags.method=early multi_input=early $COMMON
for head in concat sum gated attention bilinear; do
  transfuse-train -m experiment=noisy_mnist_fusion/base tags.method=feature_$head multi_input=feature head=$head $COMMON
done
transfuse-train -m experiment=noisy_mnist_fusion/base tags.method=late multi_input=late $COMMON

transfuse-report --experiment noisy_mnist_fusion --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method --metric test/acc,test/ece,time/fit_s --lower-is-better test/ece,time/fit_s \
  --order view1_rotated,view2_noisy,early,feature_concat,feature_sum,feature_gated,feature_attention,feature_bilinear,late \
  --markdown "experiments/noisy_mnist_fusion/results/$STUDY_RUN.md"
