"""Transferability scores against hand-computed values and independent reference implementations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from transfuse.transferability import hscore, knn_accuracy, leep, logme, logme_exact, nce

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
def test_logme_exact_matches_marginal_likelihood_reference(n, d, separable):
    if separable:
        features, labels = _separable(n, d, 3, seed=1)
    else:
        gen = torch.Generator().manual_seed(0)
        features = torch.randn(n, d, generator=gen, dtype=torch.float64)
        labels = torch.arange(n) % 3
    expected = _logme_reference(features.numpy(), labels.numpy(), 3)
    assert logme_exact(features, labels) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("score", [logme, logme_exact], ids=["logme", "logme_exact"])
def test_logme_of_separable_features_beats_random_features(score):
    features, labels = _separable(60, 8, 3, seed=2)
    random = torch.randn(60, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert score(features, labels) > score(random, labels) + 0.1


def test_logme_exact_is_invariant_to_sample_order_scale_and_rotation():
    features, labels = _separable(50, 6, 4, seed=4)
    score = logme_exact(features, labels)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(5))
    assert logme_exact(features[order], labels[order]) == pytest.approx(score, abs=1e-9)
    assert logme_exact(1e3 * features, labels) == pytest.approx(score, abs=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    assert logme_exact(features @ rotation, labels) == pytest.approx(score, abs=1e-9)


def test_logme_exact_with_fewer_samples_than_dimensions_is_finite_and_converges(caplog):
    features, labels = _separable(10, 64, 3, seed=7)
    with caplog.at_level(logging.WARNING, logger="transfuse.transferability"):
        score = logme_exact(features.float(), labels)  # float32 in, as a backbone would give
    assert math.isfinite(score)
    assert not caplog.records


def test_logme_exact_warns_when_the_iteration_is_cut_short(caplog):
    features, labels = _separable(40, 5, 3, seed=8)
    with caplog.at_level(logging.WARNING, logger="transfuse.transferability"):
        logme_exact(features, labels, max_iter=2)
    assert "did not converge" in caplog.text


def _logme_published_reference(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The authors' fixed point (thuml/LogME ``LogME._fit_fixed_point``) written the direct O(D^3) way.

    Same updates and constants as theirs (alpha = beta = 1 to start, at most 11 steps, stop when alpha / beta
    moves by at most 0.1 %, 1e-5 in the denominators, ``log(alpha + beta * lambda)`` summed over the min(N, D)
    largest eigenvalues of F^T F, those of square root up to 1e-10 dropped when N > D), but by another route:
    an eigendecomposition of the D x D matrix F^T F instead of an SVD of F, the posterior mean from a linear solve
    of ``(F^T F + alpha / beta I) m = F^T y`` and the residual from ``F m - y`` directly.
    """
    n, d = features.shape
    gram = features.T @ features
    lam = np.sort(np.linalg.eigvalsh(gram))[::-1][: min(n, d)]
    if n > d:
        lam = lam[np.sqrt(np.clip(lam, 0, None)) > 1e-10]
    lam = np.clip(lam, 0, None)
    scores = []
    for k in range(num_classes):
        y = (labels == k).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            m = np.linalg.solve(gram + t * np.eye(d), features.T @ y)
            gamma = np.sum(lam / (lam + t))
            m2, res2 = m @ m, np.sum((features @ m - y) ** 2)
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * lam))
            - beta / 2 * res2
            - alpha / 2 * m2
            - n / 2 * math.log(2 * math.pi)
        )
        scores.append(evidence / n)
    return float(np.mean(scores))


def gaussian_clusters(n: int, d: int, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ~ N(0, I), samples = mean + N(0, I): the setting of the issue's N-versus-D table."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    means = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return means[labels] + torch.randn(n, d, generator=gen, dtype=torch.float64), labels


@pytest.mark.parametrize(
    ("n", "d", "kind"),
    [(60, 8, "clusters"), (60, 8, "random"), (30, 30, "clusters"), (20, 50, "clusters"), (20, 50, "random")],
    ids=["N>D-clusters", "N>D-random", "N=D-clusters", "N<D-clusters", "N<D-random"],
)
def test_logme_matches_the_published_fixed_point(n, d, kind):
    if kind == "clusters":
        features, labels = gaussian_clusters(n, d, k=4, seed=n + d)
    else:
        features = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        labels = torch.arange(n) % 4
    expected = _logme_published_reference(features.numpy(), labels.numpy(), 4)
    assert logme(features, labels) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_logme_matches_the_published_fixed_point_at_the_issues_size():
    features, labels = gaussian_clusters(40, 100, k=5, seed=1)  # the issue's N < D regime (100 x 512), scaled down
    expected = _logme_published_reference(features.numpy(), labels.numpy(), 5)
    assert logme(features.float(), labels) == pytest.approx(expected, rel=1e-5)
    assert expected > logme_exact(features, labels) + 1  # the uncounted prior dimensions


def test_logme_equals_the_exact_evidence_with_more_samples_than_dimensions():
    features, labels = gaussian_clusters(200, 16, k=5, seed=3)
    assert logme(features, labels) == pytest.approx(logme_exact(features, labels), abs=1e-3)


def test_logme_with_fewer_samples_than_dimensions_grows_with_the_feature_scale():
    n, d = 20, 50
    features, labels = gaussian_clusters(n, d, k=4, seed=5)
    # alpha scales with c^2 and each of the N kept log(alpha + beta s^2) too, D/2 log(alpha) is not matched
    expected = (d - n) / n * math.log(10.0)
    assert logme(10 * features, labels) - logme(features, labels) == pytest.approx(expected, rel=0.05)  # 11 steps, eps
    assert logme_exact(10 * features, labels) == pytest.approx(logme_exact(features, labels), abs=1e-6)


def test_logme_is_invariant_to_sample_order_and_rotation():
    features, labels = gaussian_clusters(40, 60, k=4, seed=6)
    score = logme(features, labels)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    assert logme(features[order], labels[order]) == pytest.approx(score, abs=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn(60, 60, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    assert logme(features @ rotation, labels) == pytest.approx(score, abs=1e-9)


# ------------------------------------------------------------------------------------------------------ NCE


def test_nce_hand_computed():
    predictions = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    # P(y, z): z=0 -> y=0 twice, y=1 once; z=1 -> y=1 twice; z=2 -> y=0 once (N = 6)
    # -H(Y|Z) = sum P(y, z) log P(y | z) = 2/6 log(2/3) + 1/6 log(1/3) + 2/6 log 1 + 1/6 log 1
    expected = 2 / 6 * math.log(2 / 3) + 1 / 6 * math.log(1 / 3)
    assert nce(predictions, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "z", "k", "seed"), [(50, 5, 3, 0), (80, 12, 10, 1), (30, 2, 4, 2)])
def test_nce_matches_sklearn_mutual_information(n, z, k, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=gen)
    predictions = torch.where(torch.rand(n, generator=gen) < 0.5, labels % z, torch.randint(0, z, (n,), generator=gen))
    y, p = labels.numpy(), predictions.numpy()
    # H(Y | Z) = H(Y) - I(Y; Z), both in nats
    expected = -(entropy(np.bincount(y)) - mutual_info_score(y, p))
    assert nce(predictions, labels) == pytest.approx(expected, abs=1e-10)


def test_nce_is_zero_for_a_relabelling_and_minus_label_entropy_for_a_constant():
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    assert nce(torch.tensor([4, 0, 7])[labels], labels) == pytest.approx(0.0, abs=1e-12)
    constant = torch.zeros(7, dtype=torch.long)
    assert nce(constant, labels) == pytest.approx(-entropy(np.bincount(labels.numpy())), abs=1e-12)


# -------------------------------------------------------------------------------------------------- H-score


def _hscore_reference(features: np.ndarray, labels: np.ndarray) -> float:
    """Bao et al.'s H-score as the reference implementations write it: np.cov, class means by loop, np.linalg.pinv."""
    cov_f = np.cov(features, rowvar=False)
    g = np.zeros_like(features)
    for k in np.unique(labels):
        g[labels == k] = features[labels == k].mean(0)
    cov_g = np.cov(g, rowvar=False)
    cut = features.shape[1] * np.finfo(np.float64).eps
    return float(np.trace(np.linalg.pinv(cov_f, rcond=cut, hermitian=True) @ cov_g))


@pytest.mark.parametrize(("n", "d", "k", "seed"), [(60, 8, 3, 0), (200, 32, 10, 1), (40, 5, 4, 2)])
def test_hscore_matches_numpy_reference(n, d, k, seed):
    features, labels = gaussian_clusters(n, d, k=k, seed=seed)
    features = features + 3  # not centred: the covariances centre
    assert hscore(features, labels) == pytest.approx(_hscore_reference(features.numpy(), labels.numpy()), rel=1e-8)


def test_hscore_hand_computed_and_bounded_by_classes_minus_one():
    # one feature, class means -1 and 1, within-class spread +-1: total variance 2, between-class variance 1
    features = torch.tensor([[-2.0], [0.0], [0.0], [2.0]])
    assert hscore(features, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.5, abs=1e-12)
    features, labels = gaussian_clusters(100, 6, k=4, seed=3)
    assert 0 < hscore(features, labels) < 3


def test_hscore_saturates_at_classes_minus_one_when_samples_do_not_outnumber_dimensions():
    informative, labels = gaussian_clusters(30, 60, k=3, seed=4)
    noise = torch.randn(30, 60, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert hscore(informative, labels) == pytest.approx(2.0, abs=1e-6)
    assert hscore(noise, labels) == pytest.approx(2.0, abs=1e-6)  # documented: uninformative when N <= D


# ---------------------------------------------------------------------------------------------------- k-NN


@pytest.mark.parametrize(("n", "d", "k", "seed"), [(40, 6, 1, 0), (40, 6, 5, 1), (45, 20, 3, 2), (30, 3, 7, 3)])
def test_knn_accuracy_matches_sklearn_leave_one_out(n, d, k, seed):
    features, labels = gaussian_clusters(n, d, k=3, seed=seed)
    features = features / 2 + 0.3  # off the origin, so cosine differs from the direction of the raw clusters
    x, y = features.numpy(), labels.numpy()
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    expected = float((cross_val_predict(knn, x, y, cv=LeaveOneOut()) == y).mean())
    assert knn_accuracy(features, labels, k=k) == pytest.approx(expected, abs=1e-12)


def test_knn_accuracy_hand_computed_leaves_the_sample_out():
    # two tight pairs of opposite classes: each sample's own copy would vote for it, its neighbour does not
    features = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert knn_accuracy(features, torch.tensor([0, 1, 0, 1]), k=1) == 0.0
    assert knn_accuracy(features, torch.tensor([0, 0, 1, 1]), k=1) == 1.0
    assert knn_accuracy(3 * features, torch.tensor([0, 0, 1, 1]), k=1) == 1.0  # cosine: scale does not matter


# ---------------------------------------------------------------------------------------------- validation

FEATURES = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
PROBS = torch.full((6, 2), 0.5)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "score", [logme, logme_exact, hscore, knn_accuracy, leep], ids=["logme", "logme_exact", "hscore", "knn", "leep"]
)
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
    inputs = PROBS if score is leep else FEATURES
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
@pytest.mark.parametrize("score", [logme, logme_exact], ids=["logme", "logme_exact"])
def test_bad_logme_inputs_are_refused(score, features, labels, message):
    with pytest.raises(ValueError, match=message):
        score(features, labels)


@pytest.mark.parametrize("k", [0, 6, 2.0])
def test_bad_knn_neighbour_counts_are_refused(k):
    with pytest.raises(ValueError, match=rf"k must be an int in \[1, N - 1\] = \[1, 5\], got {k}"):
        knn_accuracy(FEATURES, LABELS, k=k)


@pytest.mark.parametrize(
    ("predictions", "labels", "message"),
    [
        (LABELS.float(), LABELS, "source_predictions must be an integer tensor"),
        (LABELS[:, None], LABELS, r"source_predictions must be a 1-D tensor \[N\]"),
        (LABELS[:5], LABELS, r"labels must have one entry per entry of source_predictions \(5\), got 6"),
        (LABELS - 1, LABELS, "source_predictions must be >= 0, got -1"),
        (LABELS[:0], LABELS[:0], "source_predictions must not be empty"),
    ],
)
def test_bad_nce_inputs_are_refused(predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        nce(predictions, labels)


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
