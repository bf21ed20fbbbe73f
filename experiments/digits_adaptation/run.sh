#!/usr/bin/env bash
# digits_adaptation: mnist5k -> UCI digits and back with unlabelled targets, laid out as Ganin et al. (2016)
# lay out their digit table: source-only, AdaBN, DANN, CORAL, MMD and the train-on-target oracle, 3 seeds.
# Every run trains a ResNet-18 from scratch for 5 epochs on the same paired batches (64 source + 64 target
# images). About 45 minutes on a 2-core CPU.
set -euo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-0,1,2}
METHODS=${METHODS:-source_only,dann,coral,mmd}
COMMON="seed=$SEEDS study_run=$STUDY_RUN last_checkpoint=none trainer.enable_progress_bar=false"
COMMON="$COMMON hydra/job_logging=none hydra/hydra_logging=none"

for pair in mnist5k:digits digits:mnist5k; do
  source=${pair%%:*} target=${pair##*:}
  # source labels + target images; test/acc is the target test accuracy, selection on source validation
  transfuse-train -m experiment=digits_adaptation/adapt data=$source data@target_data=$target adapt=$METHODS $COMMON
  # AdaBN: each source-only model with BatchNorm statistics re-estimated on the target images
  transfuse-train -m experiment=digits_adaptation/adabn data=$target source_data=$source $COMMON
  # oracle: the same training with the target's own labels
  transfuse-train -m experiment=digits_adaptation/adapt data=$target data@target_data=$target adapt=source_only \
    tags.method=oracle "tags.pair='$source->$target'" $COMMON
done

transfuse-report --experiment digits_adaptation --filter "tags.study_run = '$STUDY_RUN'" \
  --rows tags.method --columns tags.pair --metric test/acc --order source_only,adabn,dann,coral,mmd,oracle \
  --markdown "experiments/digits_adaptation/results/$STUDY_RUN.md"
