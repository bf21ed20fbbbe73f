#!/usr/bin/env bash
# digits_soups, the weight-space rows with BatchNorm running statistics re-estimated on the fusion data's
# training images after averaging (reset_bn=true, the default since issue 17, tag bn=reset) and kept as the
# mean of the members' statistics (reset_bn=false, as every soup before, tag bn=kept): pools a, a_low_lr and
# mixed, plus task arithmetic, TIES and Fisher merging of pool a, beside the output ensembles (tag bn=none).
# The members are run.sh's fine-tunes (six of source a, three of b), shortened to 10 epochs (30 in run.sh) so
# that the rerun fitted a 2-core CPU shared with other jobs; they train in parallel, one thread each, and the
# three fusion jobs too (latencies were measured under that load). About 45 minutes on a loaded 2-core CPU.
# BACKBONE=test_vit runs the LayerNorm variant (timm's tiny test ViT: no BatchNorm, so reset_bn changes nothing).
# Run from the repository root with the project installed.
set -uo pipefail
STUDY_RUN=${STUDY_RUN:-$(date +%Y%m%d-%H%M%S)}
COMMON="study_run=$STUDY_RUN trainer.enable_progress_bar=false hydra/job_logging=none hydra/hydra_logging=none"
COMMON="$COMMON${BACKBONE:+ backbone=$BACKBONE}"
export OMP_NUM_THREADS=1

transfuse-train experiment=digits_soups/source source=a seed=0 $COMMON last_checkpoint=none
for LR in 1e-4 3e-4 1e-3; do for SEED in 0 1; do
  transfuse-train experiment=digits_soups/member source=a optimizer.lr=$LR seed=$SEED $COMMON last_checkpoint=none \
    resume=false trainer.max_epochs=10 &
done; done
wait
# the second initialisation, for the mixed pool (nine members of sources a and b)
transfuse-train experiment=digits_soups/source source=b seed=1 $COMMON last_checkpoint=none
for LR in 1e-4 3e-4 1e-3; do
  transfuse-train experiment=digits_soups/member source=b optimizer.lr=$LR seed=0 $COMMON last_checkpoint=none \
    resume=false trainer.max_epochs=10 &
done
wait

transfuse-fuse experiment=digits_soups/fuse "fusion_method=[best_member,logit_mean,prob_mean]" +tags.bn=none $COMMON &
for BN in true false; do
  TAG=$([ "$BN" = true ] && echo reset || echo kept)
  METHODS="uniform_soup greedy_soup task_arithmetic ties fisher"
  SET=$(for m in $METHODS; do printf 'fusion_method.%s.reset_bn=%s ' "$m" "$BN"; done)
  # shellcheck disable=SC2086
  (transfuse-fuse experiment=digits_soups/fuse "fusion_method=[${METHODS// /,}]" $SET +tags.bn=$TAG $COMMON
  transfuse-fuse experiment=digits_soups/fuse fusion_method=uniform_soup fusion_method.uniform_soup.reset_bn=$BN \
    tags.pool=a_low_lr +tags.bn=$TAG $COMMON \
    "pool.filter=\"tags.role = 'member' and tags.study_run = '$STUDY_RUN' and tags.source = 'a' and params.\`optimizer.lr\` != '0.001'\""
  transfuse-fuse experiment=digits_soups/fuse members_of=mixed fusion_method=uniform_soup \
    fusion_method.uniform_soup.require_shared_init=false fusion_method.uniform_soup.reset_bn=$BN +tags.bn=$TAG $COMMON) &
done
wait

transfuse-report --experiment digits_soups --filter "tags.study_run = '$STUDY_RUN' and tags.role = 'fusion'" \
  --rows tags.pool,tags.method,tags.bn --metric test/acc,val/acc,cost/params,cost/flops,cost/latency_ms_b1 \
  --lower-is-better cost/params,cost/flops,cost/latency_ms_b1 \
  --markdown "experiments/digits_soups/results/$STUDY_RUN.md"
