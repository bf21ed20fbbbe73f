"""Transferability scores against hand-computed values and independent reference implementations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from transfuse.transferability import leep, logme

# ---------------------------------------------------------------------------------------------------- LEEP


def _leep_reference(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """LEEP written as loops over the paper's sums (Nguyen et al. 2020, eqs. 1-2)."""
    n, z_count = probs.shape
    joint = np.zeros((num_classes, z_count))
    for i in range(n):
        for z in range(z_count):
            joint[labels[i], z] += probs[i, z] / n
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[labels[i], z] / joint[:, z].sum() * probs[i, z] for z in range(z_count)))
    return total / n


def test_leep_hand_computed():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 0, 1])
    # P(y, z) = 1/4 * sum of theta_i(z) over the samples of class y:
    #   P(0, 0) = (0.9 + 0.6 + 0.2) / 4 = 0.425   P(0, 1) = (0.1 + 0.4 + 0.8) / 4 = 0.325
    #   P(1, 0) = 0.3 / 4 = 0.075                 P(1, 1) = 0.7 / 4 = 0.175
    # P(z = 0) = P(z = 1) = 0.5, so P(0|0) = 0.85, P(0|1) = 0.65, P(1|0) = 0.15, P(1|1) = 0.35.
    # sum_z P(y_i | z) theta_i(z) per sample:
    #   i=0 (y=0): 0.85 * 0.9 + 0.65 * 0.1 = 0.765 + 0.065 = 0.83
    #   i=1 (y=0): 0.85 * 0.6 + 0.65 * 0.4 = 0.51 + 0.26 = 0.77
    #   i=2 (y=0): 0.85 * 0.2 + 0.65 * 0.8 = 0.17 + 0.52 = 0.69
    #   i=3 (y=1): 0.15 * 0.3 + 0.35 * 0.7 = 0.045 + 0.245 = 0.29
    expected = (math.log(0.83) + math.log(0.77) + math.log(0.69) + math.log(0.29)) / 4
    assert leep(probs, labels) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("n", "z", "k", "seed"), [(30, 5, 3, 0), (50, 2, 4, 1), (20, 10, 2, 2)])
def test_leep_matches_loop_reference(n, z, k, seed):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, z, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.arange(n) % k  # every class present
    expected = _leep_reference(probs.numpy(), labels.numpy(), k)
    assert leep(probs, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "source_of_label",
    [[0, 1, 2], [2, 0, 1], [3, 0, 4]],  # aligned; source classes relabelled; more source classes than target
    ids=["aligned", "permuted", "wider-source"],
)
def test_leep_of_a_source_that_determines_the_label_is_zero(source_of_label):
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    probs = torch.nn.functional.one_hot(torch.tensor(source_of_label)[labels], 5).float()
    assert leep(probs, labels) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_leep_is_at_most_zero(seed):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(5 * torch.randn(25, 6, generator=gen), dim=1)
    labels = torch.randint(0, 4, (25,), generator=gen)
    assert leep(probs, labels) <= 0


def test_leep_of_uniform_source_is_negative_label_entropy_and_below_informative_source():
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    uniform = torch.full((10, 4), 0.25)
    # uniform theta: P(y, z) = n_y / (4N) and P(z) = 1/4, so P(y | z) = n_y / N = P(y) and
    # LEEP = mean_i log P(y_i) = 0.5 log 0.5 + 0.3 log 0.3 + 0.2 log 0.2 (the negative label entropy)
    expected = 0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)
    assert leep(uniform, labels) == pytest.approx(expected, abs=1e-7)
    informative = 0.5 * uniform + 0.5 * torch.nn.functional.one_hot(labels, 4)  # half the mass on the label
    assert leep(informative, labels) > leep(uniform, labels) + 0.1


def test_leep_ignores_target_classes_without_samples():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(12, 3, generator=gen), dim=1)
    labels = torch.arange(12) % 3
    assert leep(probs, labels, num_classes=7) == pytest.approx(leep(probs, labels), abs=1e-12)


# --------------------------------------------------------------------------------------------------- LogME


def _logme_reference(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """LogME from the marginal likelihood itself: y ~ N(0, F F^T / alpha + I / beta), maximised by scipy.

    This is a different route from the module's (no SVD, no fixed point, no posterior mean): an explicit
    N x N covariance, its inverse and log-determinant, and Nelder-Mead over (log alpha, log beta) from
    several starts, because the maximum can lie far out (alpha -> inf when features explain nothing).
    """
    n = features.shape[0]
    gram = features @ features.T
    scores = []
    for k in range(num_classes):
        y = (labels == k).astype(np.float64)

        def negative_log_evidence(log_ab: np.ndarray, y: np.ndarray = y) -> float:
            alpha, beta = np.exp(log_ab)
            cov = gram / alpha + np.eye(n) / beta
            _, logdet = np.linalg.slogdet(cov)
            return 0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.inv(cov) @ y)

        options = {"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000}
        best = min(
            minimize(negative_log_evidence, np.array(start), method="Nelder-Mead", options=options).fun
            for start in [(0.0, 0.0), (3.0, 3.0), (-3.0, 1.0)]
        )
        scores.append(-best / n)
    return float(np.mean(scores))


def _separable(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose class means lie far apart, so a linear head separates the classes."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    means = 4 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    return means[labels] + torch.randn(n, d, generator=gen, dtype=torch.float64), labels


@pytest.mark.parametrize(
    ("n", "d", "separable"),
    [(40, 5, False), (40, 5, True), (12, 30, False), (12, 30, True)],
    ids=["N>D-random", "N>D-separable", "N<D-random", "N<D-separable"],
)
def test_logme_matches_marginal_likelihood_reference(n, d, separable):
    if separable:
        features, labels = _separable(n, d, 3, seed=1)
    else:
        gen = torch.Generator().manual_seed(0)
        features = torch.randn(n, d, generator=gen, dtype=torch.float64)
        labels = torch.arange(n) % 3
    expected = _logme_reference(features.numpy(), labels.numpy(), 3)
    assert logme(features, labels) == pytest.approx(expected, abs=1e-5)


def test_logme_of_separable_features_beats_random_features():
    features, labels = _separable(60, 8, 3, seed=2)
    random = torch.randn(60, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert logme(features, labels) > logme(random, labels) + 0.1


def test_logme_is_invariant_to_sample_order_scale_and_rotation():
    features, labels = _separable(50, 6, 4, seed=4)
    score = logme(features, labels)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(5))
    assert logme(features[order], labels[order]) == pytest.approx(score, abs=1e-9)
    assert logme(1e3 * features, labels) == pytest.approx(score, abs=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    assert logme(features @ rotation, labels) == pytest.approx(score, abs=1e-9)


def test_logme_with_fewer_samples_than_dimensions_is_finite_and_converges(caplog):
    features, labels = _separable(10, 64, 3, seed=7)
    with caplog.at_level(logging.WARNING, logger="transfuse.transferability"):
        score = logme(features.float(), labels)  # float32 in, as a backbone would give
    assert math.isfinite(score)
    assert not caplog.records


def test_logme_warns_when_the_iteration_is_cut_short(caplog):
    features, labels = _separable(40, 5, 3, seed=8)
    with caplog.at_level(logging.WARNING, logger="transfuse.transferability"):
        logme(features, labels, max_iter=2)
    assert "did not converge" in caplog.text


# ---------------------------------------------------------------------------------------------- validation

FEATURES = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
PROBS = torch.full((6, 2), 0.5)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("score", [logme, leep], ids=["logme", "leep"])
@pytest.mark.parametrize(
    ("labels", "num_classes", "message"),
    [
        (LABELS[:, None], None, r"labels must be a 1-D tensor \[N\], got \(6, 1\)"),
        (LABELS.float(), None, "labels must be an integer tensor, got dtype torch.float32"),
        (LABELS[:5], None, r"labels must have one entry per row of \w+ \(6\), got 5"),
        (LABELS - 1, None, "labels must be >= 0, got -1"),
        (LABELS, 2, "labels must be < num_classes=2, got 2"),
        (LABELS, 0, "num_classes must be >= 1, got 0"),
        (LABELS, 2.0, "num_classes must be an int or None, got 2.0"),
    ],
)
def test_bad_labels_are_refused(score, labels, num_classes, message):
    inputs = FEATURES if score is logme else PROBS
    with pytest.raises(ValueError, match=message):
        score(inputs, labels, num_classes)


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (FEATURES[:, 0], LABELS, r"features must be a 2-D tensor \[N, D\], got \(6,\)"),
        (FEATURES.long(), LABELS, "features must be a floating-point tensor, got dtype torch.int64"),
        (torch.full((6, 3), math.nan), LABELS, "features must be finite, got 18 NaN or infinite entries"),
        (torch.zeros(6, 3), LABELS, "features must not be all zero"),
        (FEATURES, torch.tensor([0, 0, 2, 2, 0, 2]), r"every class needs at least one sample .* classes \[1\]"),
    ],
)
def test_bad_logme_inputs_are_refused(features, labels, message):
    with pytest.raises(ValueError, match=message):
        logme(features, labels)


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (torch.empty(0, 2), r"source_probs must be a non-empty 2-D tensor \[N, Z\], got \(0, 2\)"),
        (torch.tensor([[1.5, -0.5]] * 6), "source_probs must be non-negative, got minimum -0.5"),
        (torch.cat([PROBS[:5], torch.tensor([[0.5, 0.6]])]), r"must sum to 1 \(softmax outputs\), got 1.1 in row 5"),
        (torch.randn(6, 2, generator=torch.Generator().manual_seed(1)), "source_probs must be"),
    ],
)
def test_bad_leep_probabilities_are_refused(probs, message):
    labels = LABELS if len(probs) == 6 else LABELS[:0]
    with pytest.raises(ValueError, match=message):
        leep(probs, labels)
