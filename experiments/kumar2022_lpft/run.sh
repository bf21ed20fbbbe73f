#!/usr/bin/env bash
# kumar2022_lpft, small form: linear probing, full fine-tuning and LP-FT of an mnist5k ResNet-18 on UCI digits
# with 10 labels per class (ID), each then tested back on mnist5k (OOD: the distribution the pretrained
# features were good on), 3 seeds. Run from the repository root with the project installed.
# About 12 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"

# 1. the pretrained model of each seed, and it tested on the target as it is
transfuse-train -m experiment=kumar2022_lpft/source $COMMON
transfuse-train -m experiment=kumar2022_lpft/source_only $COMMON
# 2. on the target (ID): the three ways of Kumar et al. with the digits_finetune recipes
transfuse-train -m experiment=kumar2022_lpft/finetune finetune=linear_probe optimizer.lr=1e-2 $COMMON
transfuse-train -m experiment=kumar2022_lpft/finetune finetune=full $COMMON
transfuse-train -m experiment=kumar2022_lpft/finetune finetune=lp_ft finetune.probe_epochs=10 \
  finetune.head_lr_mult=10 $COMMON
# 3. OOD: every target model tested on mnist5k's test split
transfuse-train -m experiment=kumar2022_lpft/ood target_method=linear_probe,full,lp_ft $COMMON

# ID (digits) and OOD (mnist5k) test accuracy side by side, one row per method
transfuse-report --experiment kumar2022_lpft --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method --columns tags.data --metric test/acc --order source,linear_probe,full,lp_ft \
  --markdown "experiments/kumar2022_lpft/results/$STUDY_RUN.md"
