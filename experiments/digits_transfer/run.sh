#!/usr/bin/env bash
# The digits_transfer study: mnist5k -> UCI digits with 10 labels per class, 3 seeds.
# Run from the repository root with the project installed (scripts/demo.sh does both).
# All runs of one invocation share a study_run tag, so the table reads exactly these runs.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
RESULTS=${RESULTS:-$(dirname "$0")/results}  # where the table is written as Markdown
mkdir -p "$RESULTS"
# last_checkpoint=none: each run uploads only best.ckpt (45 MB for ResNet-18), enough to start later stages from
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"
# EXTRA: overrides added to every command, e.g. EXTRA="trainer.max_epochs=1" for a quick pass (not the table)
COMMON="$COMMON ${EXTRA:-}"

# 1. source: pretrain on mnist5k, one model per seed
transfuse-train -m experiment=digits_transfer/pretrain $COMMON
# 2. target baselines: the source model without target training, and training on the target alone
transfuse-train -m experiment=digits_transfer/source_only $COMMON
transfuse-train -m experiment=digits_transfer/scratch optimizer.lr=1e-3 $COMMON
# 3. transfer: each strategy with the learning rate that suits it (a linear head needs a larger one)
transfuse-train -m experiment=digits_transfer/finetune finetune=linear_probe optimizer.lr=1e-2 $COMMON
transfuse-train -m experiment=digits_transfer/finetune finetune=full optimizer.lr=3e-4 $COMMON

# 4. the table, read back from MLflow
transfuse-report --experiment digits_transfer --filter "tags.study_run = '$STUDY_RUN' and tags.data = 'digits'" \
  --rows tags.method --metric test/acc --order source_only,scratch,linear_probe,full \
  --markdown "$RESULTS/$STUDY_RUN.md"
