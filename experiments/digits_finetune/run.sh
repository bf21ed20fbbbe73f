#!/usr/bin/env bash
# digits_finetune: mnist5k -> UCI digits with 1, 5, 10 and 50 labels per class, seven ways, 3 seeds.
# Run from the repository root with the project installed. About 30 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
LABELS=${LABELS:-1,5,10,50}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"
TARGET="$COMMON data.train_per_class=$LABELS"

transfuse-train -m experiment=digits_finetune/source $COMMON
transfuse-train -m experiment=digits_finetune/scratch $TARGET
# a linear head needs a larger learning rate than the pretrained layers
transfuse-train -m experiment=digits_finetune/finetune finetune=linear_probe optimizer.lr=1e-2 $TARGET
transfuse-train -m experiment=digits_finetune/finetune finetune=full $TARGET
transfuse-train -m experiment=digits_finetune/finetune finetune=lp_ft finetune.probe_epochs=10 \
  finetune.head_lr_mult=10 $TARGET
transfuse-train -m experiment=digits_finetune/finetune finetune=partial finetune.freeze_blocks=3 $TARGET
transfuse-train -m experiment=digits_finetune/finetune finetune=l2_sp optimizer.weight_decay=0 $TARGET
transfuse-train -m experiment=digits_finetune/finetune finetune=full finetune.layer_decay=0.6 optimizer.lr=1e-3 \
  tags.method=layer_decay $TARGET

transfuse-report --experiment digits_finetune --filter "tags.study_run = '$STUDY_RUN' and tags.data = 'digits'" \
  --rows tags.method,tags.labels_per_class --metric test/acc \
  --order scratch,linear_probe,full,lp_ft,partial,l2_sp,layer_decay \
  --markdown "experiments/digits_finetune/results/$STUDY_RUN.md"
