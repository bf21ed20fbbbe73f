#!/usr/bin/env bash
# source_ranking: do LogME and LEEP, computed without training, rank five candidate sources for UCI digits
# (10 labels per class) the way fine-tuning each of them does? About 10 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
COMMON="study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"
CANDIDATES=mnist,mnist_1epoch,mnist_50pc,mnist_10pc,shapes

# 1. the candidates: MNIST for 5 epochs or 1, MNIST with 50 or 10 images per class, procedural shapes
transfuse-train experiment=source_ranking/source candidate=mnist $COMMON
transfuse-train experiment=source_ranking/source candidate=mnist_1epoch trainer.max_epochs=1 $COMMON
transfuse-train experiment=source_ranking/source candidate=mnist_50pc data.train_per_class=50 $COMMON
transfuse-train experiment=source_ranking/source candidate=mnist_10pc data.train_per_class=10 $COMMON
transfuse-train experiment=source_ranking/source candidate=shapes data=synthetic $COMMON
# 2. scores on the target's labelled images, no training
transfuse-train -m experiment=source_ranking/score candidate=$CANDIDATES $COMMON
# 3. what the scores should predict: fine-tuned target accuracy, 3 seeds per candidate
transfuse-train -m experiment=source_ranking/finetune candidate=$CANDIDATES seed=$SEEDS $COMMON

python experiments/source_ranking/rank.py --study-run "$STUDY_RUN" \
  --markdown "experiments/source_ranking/results/$STUDY_RUN.md"
