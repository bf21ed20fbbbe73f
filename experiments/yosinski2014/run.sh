#!/usr/bin/env bash
# yosinski2014, small form: mnist5k (task A) -> UCI digits (task B) with 10 labels per class, 3 seeds.
# The paper's four transfer networks for n = 1..5 copied blocks of ResNet-18 (stem + 4 stages), the rest
# re-initialised: AnB and BnB (copied blocks frozen), AnB+ and BnB+ (everything fine-tuned); baseB is the
# scratch network (n = 0). AnB_warm (the blocks above n fine-tuned from A instead of re-initialised) is our
# extra row. Run from the repository root with the project installed. About 25 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
N=${N:-1,2,3,4,5}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"

# 1. the base networks of each seed: A trained on mnist5k, B (baseB) trained from random weights on the target
transfuse-train -m experiment=yosinski2014/source $COMMON
transfuse-train -m experiment=yosinski2014/scratch $COMMON
# 2. the first n blocks copied from A or from B, the rest re-initialised: frozen (AnB, BnB) or all tuned (+)
transfuse-train -m experiment=yosinski2014/copy_frozen base=A,B n=$N $COMMON
transfuse-train -m experiment=yosinski2014/copy_tuned base=A,B n=$N $COMMON
# 3. our extra row: every block from A, the first n frozen, the rest fine-tuned from A's weights
transfuse-train -m experiment=yosinski2014/transfer finetune.freeze_blocks=$N $COMMON

# the table (methods by n) and the paper's figure (accuracy against n, a line per method)
transfuse-report --experiment yosinski2014 --filter "tags.study_run = '$STUDY_RUN' and tags.data = 'digits'" \
  --rows tags.method --columns tags.n --metric test/acc --order scratch,AnB,AnB+,BnB,BnB+,AnB_warm \
  --markdown "experiments/yosinski2014/results/$STUDY_RUN.md" --curve "experiments/yosinski2014/results/$STUDY_RUN.png"
