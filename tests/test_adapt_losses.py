"""Domain adaptation losses against values computed by hand: reversed gradients, schedule, CORAL, MMD, DANN, PAD."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from transfuse.adapt import (
    DomainDiscriminator,
    GradientReversalLayer,
    coral_loss,
    dann_loss,
    ganin_lambda,
    grad_reverse,
    mmd_loss,
    proxy_a_distance,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# gradient reversal


def test_grl_forward_is_identity():
    x = _randn(5, 3)
    layer = GradientReversalLayer(0.7)
    assert torch.equal(layer(x), x)
    assert torch.equal(grad_reverse(x, 3.0), x)


@pytest.mark.parametrize("lambda_", [0.5, 1.0, 2.0])
def test_grl_gradient_is_reversed_and_scaled_exactly(lambda_):
    x = _randn(4, 3).requires_grad_()
    w = _randn(4, 3, seed=1)
    (w * GradientReversalLayer(lambda_)(x)).sum().backward()
    assert torch.equal(x.grad, -lambda_ * w)

    x.grad = None
    (w * grad_reverse(x, lambda_)).sum().backward()
    assert torch.equal(x.grad, -lambda_ * w)


def test_grl_lambda_can_be_changed_on_the_layer():
    layer = GradientReversalLayer()
    x = torch.ones(3, requires_grad=True)
    layer(x).sum().backward()
    assert torch.equal(x.grad, -torch.ones(3))

    layer.lambda_ = 0.25
    x.grad = None
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.25))


# schedule


def test_ganin_lambda_end_points_and_monotone():
    assert ganin_lambda(0.0) == 0.0
    assert ganin_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1, abs=1e-15)
    assert ganin_lambda(0.5, gamma=2.0) == pytest.approx(2 / (1 + math.exp(-1)) - 1, abs=1e-15)
    values = [ganin_lambda(i / 20) for i in range(21)]
    assert all(a < b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("progress", [-0.01, 1.01, float("nan")])
def test_ganin_lambda_rejects_progress_outside_unit_interval(progress):
    with pytest.raises(ValueError, match=r"progress in \[0, 1\]"):
        ganin_lambda(progress)


# CORAL


def test_coral_is_zero_for_identical_and_shifted_inputs():
    source = _randn(10, 4)
    assert coral_loss(source, source.clone()).item() == 0.0
    shifted = source + torch.tensor([3.0, -1.0, 0.5, 10.0], dtype=torch.float64)
    assert coral_loss(source, shifted).item() == pytest.approx(0.0, abs=1e-12)


def _hand_covariance(rows):
    n, d = len(rows), len(rows[0])
    means = [sum(r[j] for r in rows) / n for j in range(d)]
    return [[sum((r[a] - means[a]) * (r[b] - means[b]) for r in rows) / (n - 1) for b in range(d)] for a in range(d)]


def test_coral_matches_a_hand_computed_value():
    source = [[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]
    target = [[1.0, 1.0], [3.0, 2.0], [2.0, 0.0], [0.0, 1.0]]
    cs, ct = _hand_covariance(source), _hand_covariance(target)
    # C_s = [[4/3, -2/3], [-2/3, 4/3]]; C_t = [[5/3, 1/3], [1/3, 2/3]]
    assert [*cs[0], *cs[1]] == pytest.approx([4 / 3, -2 / 3, -2 / 3, 4 / 3])
    assert [*ct[0], *ct[1]] == pytest.approx([5 / 3, 1 / 3, 1 / 3, 2 / 3])
    expected = sum((cs[a][b] - ct[a][b]) ** 2 for a in range(2) for b in range(2)) / (4 * 2**2)
    assert expected == pytest.approx((1 / 9 + 1 + 1 + 4 / 9) / 16)
    got = coral_loss(torch.tensor(source, dtype=torch.float64), torch.tensor(target, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_coral_ignores_row_order():
    source, target = _randn(12, 5), _randn(9, 5, seed=1) * 2
    perm_s, perm_t = torch.randperm(12), torch.randperm(9)
    torch.testing.assert_close(coral_loss(source[perm_s], target[perm_t]), coral_loss(source, target))


# MMD


def test_mmd_is_zero_for_identical_samples():
    source = _randn(16, 8).float()
    assert abs(mmd_loss(source, source.clone()).item()) < 1e-6


def test_mmd_grows_with_the_shift_of_the_target():
    source, base = _randn(64, 4), _randn(64, 4, seed=1)
    values = [mmd_loss(source, base + shift).item() for shift in (0.0, 0.25, 1.0, 3.0)]
    assert all(a < b for a, b in itertools.pairwise(values)), values


def test_mmd_is_symmetric():
    source, target = _randn(20, 3), _randn(13, 3, seed=1) + 0.5
    torch.testing.assert_close(mmd_loss(source, target), mmd_loss(target, source))
    torch.testing.assert_close(mmd_loss(source, target, bandwidth=2.0), mmd_loss(target, source, bandwidth=2.0))


def _hand_mmd(xs, ys, bandwidths):
    def k(a, b):
        return sum(math.exp(-((a - b) ** 2) / bw) for bw in bandwidths)

    kss = sum(k(a, b) for a in xs for b in xs) / len(xs) ** 2
    ktt = sum(k(a, b) for a in ys for b in ys) / len(ys) ** 2
    kst = sum(k(a, b) for a in xs for b in ys) / (len(xs) * len(ys))
    return kss + ktt - 2 * kst


def test_mmd_single_kernel_matches_a_double_loop():
    xs, ys = [0.0, 1.0, 3.0], [0.5, 2.0, 2.5, 4.0]
    got = mmd_loss(torch.tensor(xs).double()[:, None], torch.tensor(ys).double()[:, None], kernel_num=1, bandwidth=1.5)
    assert got.item() == pytest.approx(_hand_mmd(xs, ys, [1.5]), rel=1e-12)


def test_mmd_default_bandwidth_family_matches_a_double_loop():
    xs, ys = [0.0, 1.0, 3.0], [0.5, 2.0, 2.5, 4.0]
    pooled = xs + ys
    n = len(pooled)
    base = sum((a - b) ** 2 for a in pooled for b in pooled) / (n * n - n)  # over distinct pairs
    bandwidths = [base * 2.0 ** (i - 2) for i in range(5)]
    got = mmd_loss(torch.tensor(xs).double()[:, None], torch.tensor(ys).double()[:, None])
    assert got.item() == pytest.approx(_hand_mmd(xs, ys, bandwidths), rel=1e-12)


def test_mmd_gradient_is_finite_for_identical_rows():
    source = _randn(6, 3).requires_grad_()
    mmd_loss(source, source.detach().clone()).backward()
    assert torch.isfinite(source.grad).all()


# DANN


class _ConstantZero(nn.Module):
    """A discriminator that is always undecided (logit 0) but keeps the graph to its input."""

    def forward(self, features):
        return features.sum(dim=1, keepdim=True) * 0.0


def test_dann_loss_of_an_undecided_discriminator_is_log_2():
    source, target = _randn(5, 3), _randn(7, 3, seed=1)
    loss = dann_loss(source, target, _ConstantZero(), GradientReversalLayer())
    assert loss.item() == pytest.approx(math.log(2), rel=1e-12)


def test_dann_loss_weights_both_domains_equally():
    # logit +1 for every row: the source part is softplus(-1), the target part softplus(1), whatever the counts
    def disc(features):
        return torch.ones(features.shape[0], 1, dtype=features.dtype)

    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    loss = dann_loss(_randn(2, 3), _randn(30, 3, seed=1), disc, nn.Identity())
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_dann_loss_reverses_feature_gradients_but_not_discriminator_gradients():
    torch.manual_seed(0)
    discriminator = DomainDiscriminator(3, hidden=8).double().eval()  # eval: the same dropout mask (none) twice
    lambda_ = 0.5

    def grads(grl):
        source = _randn(4, 3).requires_grad_()
        target = _randn(6, 3, seed=1).requires_grad_()
        discriminator.zero_grad()
        dann_loss(source, target, discriminator, grl).backward()
        return source.grad, target.grad, [p.grad.clone() for p in discriminator.parameters()]

    plain_s, plain_t, plain_d = grads(nn.Identity())
    rev_s, rev_t, rev_d = grads(GradientReversalLayer(lambda_))
    assert plain_s.abs().sum() > 0 and plain_t.abs().sum() > 0
    assert torch.equal(rev_s, -lambda_ * plain_s)
    assert torch.equal(rev_t, -lambda_ * plain_t)
    for reversed_, plain in zip(rev_d, plain_d, strict=True):
        assert torch.equal(reversed_, plain)


def test_domain_discriminator_shape_and_layers():
    discriminator = DomainDiscriminator(16, hidden=32)
    assert discriminator(torch.randn(5, 16)).shape == (5, 1)
    kinds = [type(m) for m in discriminator.net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]


# proxy A-distance


def test_pad_is_near_2_for_separated_domains():
    source, target = _randn(400, 5), _randn(400, 5, seed=1) + 10.0
    assert proxy_a_distance(source, target) >= 1.95


def test_pad_is_near_0_for_the_same_distribution():
    source, target = _randn(400, 5), _randn(400, 5, seed=1)
    assert 0.0 <= proxy_a_distance(source, target, seed=0) < 0.3


# input validation

LOSSES = {
    "coral": coral_loss,
    "mmd": mmd_loss,
    "pad": proxy_a_distance,
    "dann": lambda s, t: dann_loss(s, t, _ConstantZero(), nn.Identity()),
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (torch.zeros(4), torch.zeros(4, 3), r"source features of shape \[N, D\] \(2-D\), got shape \(4,\)"),
        (torch.zeros(4, 3), torch.zeros(2, 4, 3), r"target features of shape \[N, D\] \(2-D\), got shape \(2, 4, 3\)"),
        (torch.zeros(4, 3), torch.zeros(5, 2), r"same width, got 3 and 2"),
        (torch.zeros(1, 3), torch.zeros(5, 3), r"at least 2 rows of source features, got shape \(1, 3\)"),
    ],
)
def test_bad_feature_shapes_are_rejected(name, source, target, message):
    with pytest.raises(ValueError, match=message):
        LOSSES[name](source, target)


def test_non_tensor_features_are_rejected():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        coral_loss([[0.0, 1.0], [1.0, 0.0]], torch.zeros(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_num": 0}, "adapt.kernel_num must be >= 1, got 0"),
        ({"kernel_mul": 0.0}, "adapt.kernel_mul must be > 0, got 0.0"),
        ({"bandwidth": -1.0}, "adapt.bandwidth must be > 0 or null, got -1.0"),
    ],
)
def test_mmd_rejects_bad_kernel_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mmd_loss(torch.zeros(3, 2), torch.ones(3, 2), **kwargs)


def test_dann_rejects_a_discriminator_with_the_wrong_output():
    def two_logits(features):
        return torch.zeros(features.shape[0], 2)

    with pytest.raises(ValueError, match="one logit per row"):
        dann_loss(torch.zeros(3, 2), torch.zeros(4, 2), two_logits, nn.Identity())
