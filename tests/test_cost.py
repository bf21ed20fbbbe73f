"""The cost every model-producing run logs (cost/*), checked against hand counts and known figures."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from transfuse.models.summary import count_flops, count_params, model_cost, weights_mb


def test_flops_of_a_convolution_match_a_hand_count():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    # each of the 8 x 10 x 10 outputs is 3 x 3 x 3 multiply-adds; FlopCounterMode counts 2 FLOPs per multiply-add
    assert count_flops(conv, torch.zeros(4, 3, 10, 10)) == 2 * 8 * 10 * 10 * 3 * 3 * 3


def test_flops_of_a_linear_layer_match_a_hand_count():
    assert count_flops(nn.Linear(5, 3), torch.zeros(7, 5)) == 2 * 5 * 3  # per image; the bias is not counted


def test_resnet18_at_224_is_the_known_figure():
    """timm's ResNet-18 is 1.81 GMACs at 224x224 (timm's model card); counted on the meta device, nothing runs."""
    with torch.device("meta"):
        net = timm.create_model("resnet18")
        flops = count_flops(net, torch.zeros(2, 3, 224, 224))
    assert flops == pytest.approx(2 * 1.814e9, rel=0.01)


def test_params_count_shared_tensors_once_and_nonzero_ones_apart():
    a = nn.Linear(4, 2)
    with torch.no_grad():
        a.weight[0].zero_()
    total, nonzero = count_params([a, a])
    assert total == 10 and nonzero == 6


def test_model_cost_reports_every_figure():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    cost = model_cost([net], net, torch.rand(5, 3, 2, 2), latency_batches=(1, 8), repeats=2)
    assert set(cost) == {
        "cost/params",
        "cost/nonzero_params",
        "cost/flops",
        "cost/checkpoint_mb",
        "cost/latency_ms_b1",
        "cost/latency_ms_b8",
    }
    assert cost["cost/params"] == cost["cost/nonzero_params"] == 39
    assert cost["cost/flops"] == 2 * 12 * 3
    assert 39 * 4 / 1e6 < cost["cost/checkpoint_mb"] == weights_mb([net]) < 39 * 4 / 1e6 + 0.01
    assert cost["cost/latency_ms_b1"] > 0 and cost["cost/latency_ms_b8"] > 0
