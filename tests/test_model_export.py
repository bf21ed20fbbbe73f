"""logger.log_model=true: the best checkpoint as an MLflow model that pyfunc loads and the registry takes."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import FAST
from transfuse.runs_cli import main as runs_main
from transfuse.train import train

pytestmark = pytest.mark.slow  # logging an MLflow model takes about 10 s


def test_a_logged_model_serves_the_tested_weights_and_registers_by_name(make_config, tracking_uri, capsys):
    cfg = make_config(*FAST, "logger.log_model=true", "logger.experiment_name=served")
    train(cfg)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert run.data.tags["model_id"]
    model = mlflow.MlflowClient(tracking_uri).get_logged_model(run.data.tags["model_id"])
    assert model.experiment_id == run.info.experiment_id  # not MLflow's Default experiment in the working folder

    with pytest.raises(SystemExit, match="logged no model"):
        other = client.create_run(run.info.experiment_id).info.run_id
        runs_main(["register", other, "--name", "digits", "--tracking-uri", tracking_uri])
    runs_main(["register", run.info.run_id, "--name", "shapes", "--tracking-uri", tracking_uri])
    assert "registered shapes version 1 (models:/shapes/1)" in capsys.readouterr().out

    mlflow.set_tracking_uri(tracking_uri)
    served = mlflow.pyfunc.load_model("models:/shapes/1")
    example = served.input_example
    assert example.shape[1:] == (3, cfg.data.image_size, cfg.data.image_size)
    assert 0 <= example.min() <= example.max() <= 1
    # the same images through the trained network, normalised as training normalises them
    checkpoint = torch.load(client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt"), weights_only=True)
    from transfuse.models.build import build_model

    model = build_model(cfg, [str(c) for c in range(cfg.data.num_classes)])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    mean = torch.tensor(list(cfg.data.mean)).view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.data.std)).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = model((torch.from_numpy(example) - mean) / std).numpy()
    np.testing.assert_allclose(served.predict(example), expected, rtol=1e-5, atol=1e-5)
