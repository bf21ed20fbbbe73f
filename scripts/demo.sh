#!/usr/bin/env bash
# Set up (once) and run the demo study, experiments/digits_transfer, into ./mlflow.db.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
bash experiments/digits_transfer/run.sh
echo
echo "Browse the runs:  $VENV/bin/mlflow ui --backend-store-uri sqlite:///$ROOT/mlflow.db"
echo "then open http://127.0.0.1:5000/#/?workflowType=machine_learning (the model-training view of MLflow's UI)"
