#!/usr/bin/env bash
# digits_soups: six fine-tunes of one mnist5k checkpoint on UCI digits (10 labels per class, three learning
# rates x two seeds), fused every way transfuse-fuse knows, laid out like the model-soups table (accuracy
# and cost); then members of two different initialisations, where a uniform soup should break.
# About 15 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
COMMON="study_run=$STUDY_RUN trainer.enable_progress_bar=false hydra/job_logging=none hydra/hydra_logging=none"
TRAIN="$COMMON last_checkpoint=none"

# 1. two initialisations and the members (six from a; three from b for the mixed pool)
transfuse-train experiment=digits_soups/source source=a seed=0 $TRAIN
transfuse-train experiment=digits_soups/source source=b seed=1 $TRAIN
transfuse-train -m experiment=digits_soups/member source=a optimizer.lr=1e-4,3e-4,1e-3 seed=0,1 $TRAIN
transfuse-train -m experiment=digits_soups/member source=b optimizer.lr=1e-4,3e-4,1e-3 seed=0 $TRAIN

# 2. every fusion of the six shared-initialisation members
# (one job: the members run over the data once, and each method logs its own run)
transfuse-fuse experiment=digits_soups/fuse \
  "fusion_method=[best_member,uniform_soup,greedy_soup,logit_mean,prob_mean,vote,weighted,stacking,feature_concat]" $COMMON
# the distilled student: one ResNet-18 from source a trained on the logit ensemble's soft targets
transfuse-fuse experiment=digits_soups/fuse fusion_method=distill \
  "fusion_method.distill.student_init=\"tags.role = 'source' and tags.source = 'a' and tags.study_run = '$STUDY_RUN'\"" $COMMON
# the uniform soup of the four gentler fine-tunes only (lr 1e-4 and 3e-4)
transfuse-fuse experiment=digits_soups/fuse fusion_method=uniform_soup tags.pool=a_low_lr $COMMON \
  "pool.filter=\"tags.role = 'member' and tags.study_run = '$STUDY_RUN' and tags.source = 'a' and params.\`optimizer.lr\` != '0.001'\""
# 3. members of two initialisations: the soup has to be forced (require_shared_init=false)
transfuse-fuse experiment=digits_soups/fuse members_of=mixed "fusion_method=[best_member,logit_mean]" $COMMON
transfuse-fuse experiment=digits_soups/fuse members_of=mixed fusion_method=uniform_soup fusion_method.uniform_soup.require_shared_init=false \
  $COMMON

transfuse-report --experiment digits_soups --filter "tags.study_run = '$STUDY_RUN' and tags.role = 'fusion'" \
  --rows tags.pool,tags.method --metric test/acc,val/acc,cost/params,cost/latency_ms_per_image \
  --lower-is-better cost/params,cost/latency_ms_per_image \
  --order a,a_low_lr,mixed --markdown "experiments/digits_soups/results/$STUDY_RUN.md"
