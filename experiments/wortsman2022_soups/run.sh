#!/usr/bin/env bash
# wortsman2022_soups, small form: the rows of the model-soups table (best single model, uniform soup, greedy
# soup, output ensemble) for six fine-tunes of one mnist5k ResNet-18 on UCI digits, with the configs of
# experiments/digits_soups (its runs, its MLflow experiment). digits_soups/run.sh runs these plus the other
# fusions and the two-initialisation pool; the measured table came from that script.
# Run from the repository root with the project installed. About 6 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
COMMON="study_run=$STUDY_RUN trainer.enable_progress_bar=false hydra/job_logging=none hydra/hydra_logging=none"

# 1. one initialisation (mnist5k, seed 0) and six members: learning rates 1e-4, 3e-4, 1e-3 x seeds 0, 1
transfuse-train experiment=digits_soups/source source=a seed=0 last_checkpoint=none $COMMON
transfuse-train -m experiment=digits_soups/member source=a optimizer.lr=1e-4,3e-4,1e-3 seed=0,1 \
  last_checkpoint=none $COMMON
# 2. the paper's rows: best member (by validation), uniform and greedy soups, output ensembles
transfuse-fuse experiment=digits_soups/fuse "fusion_method=[best_member,uniform_soup,greedy_soup,logit_mean,prob_mean]" \
  $COMMON

transfuse-report --experiment digits_soups --filter "tags.study_run = '$STUDY_RUN' and tags.role = 'fusion' \
and tags.pool = 'a' and tags.method != 'vote' and tags.method != 'weighted' and tags.method != 'stacking' \
and tags.method != 'feature_concat' and tags.method != 'distill'" \
  --rows tags.method --metric test/acc,val/acc,cost/params --lower-is-better cost/params \
  --order best_member,uniform_soup,greedy_soup,logit_mean,prob_mean \
  --markdown "experiments/wortsman2022_soups/results/$STUDY_RUN.md"
