#!/usr/bin/env bash
# source_ranking: do transferability scores, computed without training, rank eight candidate sources for UCI
# digits the way fine-tuning each of them does, with 10 labels per class (N=100 < D=512 for ResNet-18 features)
# and with 100 (N=1000 > D)? The defaults are the reduced size of the README's run (one seed, short fine-tunes);
# SEEDS=0,1,2 TARGETS="10:30 100:5" is the full design. Measured times are in the README.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0}
# STAGES: which parts to run under this STUDY_RUN (sources, targets), e.g. STAGES=targets to rescore and refit
STAGES=${STAGES:-sources,targets}
# TARGETS: labels per class of the target's training split, each with its fine-tuning epochs (100 labels per
# class make ten times the steps per epoch: 3 epochs there are 96 steps, 10 epochs with 10 labels 40)
TARGETS=${TARGETS:-10:10 100:3}
COMMON="study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none ${EXTRA:-}"
RESNETS=mnist,mnist_1epoch,mnist_50pc,mnist_10pc,shapes
# the other candidates: timm's tiny test architectures, each pretrained on mnist5k like `mnist`
declare -A ARCH=(
  [test_resnet]="backbone=test_resnet"
  [test_vit]="backbone=test_vit"
  [test_convnext]="backbone=test_resnet backbone.name=test_convnext"
)

if [[ $STAGES == *sources* ]]; then
  # 1. the candidates: ResNet-18 on MNIST for 5 epochs or 1, with 50 or 10 images per class, on procedural
  #    shapes; three other architectures on MNIST
  transfuse-train experiment=source_ranking/source candidate=mnist $COMMON
  transfuse-train experiment=source_ranking/source candidate=mnist_1epoch trainer.max_epochs=1 $COMMON
  transfuse-train experiment=source_ranking/source candidate=mnist_50pc data.train_per_class=50 $COMMON
  transfuse-train experiment=source_ranking/source candidate=mnist_10pc data.train_per_class=10 $COMMON
  transfuse-train experiment=source_ranking/source candidate=shapes data=synthetic $COMMON
  for c in "${!ARCH[@]}"; do
    transfuse-train experiment=source_ranking/source candidate="$c" ${ARCH[$c]} $COMMON
  done
fi

if [[ $STAGES == *targets* ]]; then
  for target in $TARGETS; do
    TARGET="data.train_per_class=${target%:*} trainer.max_epochs=${target#*:} seed=$SEEDS"
    # 2. scores on the target's labelled images (the subset each seed draws), no training; 3. what they should
    #    predict: the fine-tuned target accuracy of the same seed
    for stage in score finetune; do
      transfuse-train -m experiment=source_ranking/$stage candidate=$RESNETS $TARGET $COMMON
      for c in "${!ARCH[@]}"; do
        transfuse-train -m experiment=source_ranking/$stage candidate="$c" ${ARCH[$c]} $TARGET $COMMON
      done
    done
  done
fi

python experiments/source_ranking/rank.py --study-run "$STUDY_RUN" \
  --markdown "experiments/source_ranking/results/$STUDY_RUN.md"
