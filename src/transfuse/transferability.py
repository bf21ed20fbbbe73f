"""Transferability scores: rank candidate source checkpoints for a target without fine-tuning any of them.

Every score needs one forward pass of the target training set through each frozen source model and no
training, so ranking many checkpoints costs minutes instead of a fine-tuning sweep per candidate. Higher
is better for all; only the ranking of sources on the same target data means anything.

From the penultimate features (``forward_head(x, pre_logits=True)``):

- ``logme``: how well a Bayesian linear model on them explains the labels (You et al., ICML 2021), computed
  as the authors' published code computes it, so numbers compare with the literature.
- ``logme_exact``: the same model's maximised evidence with every one of the D prior dimensions counted; it
  differs from ``logme`` when the features have rank below D, which is always the case when N < D.
- ``hscore``: ``tr(cov(f)^+ cov(E[f | y]))``, the between-class share of the feature variance (Bao et al., ICIP
  2019).
- ``knn_accuracy``: leave-one-out k-nearest-neighbour accuracy under cosine similarity, the simplest probe.

From the source model's own classifier (only when its head was kept):

- ``leep``: how well its soft source classes predict the target classes (Nguyen et al., ICML 2020).
- ``nce``: the negative conditional entropy of the target labels given its hard source predictions (Tran et
  al., ICCV 2019).

All are plain functions on tensors; they compute in float64 on the device of their inputs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: how far a row of probabilities may sum from 1 (float32 softmax over thousands of classes is well inside)
PROB_ATOL = 1e-4
#: the constants of the authors' ``LogME._fit_fixed_point`` (thuml/LogME, also in TLlib): at most 11 fixed-point
#: steps, stopped once alpha / beta moves by at most 0.1 %; 1e-5 added to both denominators; with N > D, singular
#: values up to 1e-10 count as zero (their rank of F); with N <= D every one of the N singular values is kept
_LOGME_STEPS = 11
_LOGME_RTOL = 1e-3
_LOGME_EPS = 1e-5
_LOGME_RANK_TOL = 1e-10
#: the default k of ``knn_accuracy``: with 10 labelled images per class, 1-NN is decided by a single (possibly
#: atypical) image; 5 votes smooth that and still leave every class a majority of its 9 other images
KNN_K = 5
#: logme_exact: alpha and beta stay inside [1 / LIMIT, LIMIT] (features are rescaled to unit spectral norm first,
#: so this is relative); beta runs to the upper bound when the features fit a class exactly, as rank-N features do
_LIMIT = 1e30


def _check_labels(labels: Tensor, n: int, num_classes: int | None, what: str, name: str = "labels") -> int:
    """Validate integer labels of ``n`` samples and return the number of classes."""
    if not isinstance(labels, Tensor) or labels.ndim != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D tensor [N], got {shape}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() != n:
        raise ValueError(f"{name} must have one entry per {what} ({n}), got {labels.numel()}")
    if n == 0:
        raise ValueError(f"{name} must not be empty")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise ValueError(f"num_classes must be an int or None, got {num_classes!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"{name} must be >= 0, got {low}")
    if num_classes is None:
        return high + 1
    if high >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got {high}")
    return num_classes


def _check_matrix(x: Tensor, name: str, shape: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor {shape}, got {got}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D tensor {shape}, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(x)).sum())} NaN or infinite entries")


def _class_targets(labels: Tensor, k: int, like: Tensor) -> Tensor:
    """One-hot targets [N, K]; every class needs a sample (an all-zero target has unbounded evidence)."""
    counts = torch.bincount(labels, minlength=k)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"every class needs at least one sample for LogME, got none for classes {missing}")
    return torch.nn.functional.one_hot(labels.long(), k).to(like)


def logme(features: Tensor, labels: Tensor, num_classes: int | None = None) -> float:
    """LogME as the authors' code computes it: mean over classes of the log evidence per sample.

    For each class ``k`` the one-hot column ``y = [labels == k]`` is modelled as ``y = F w + noise`` with a prior
    ``w ~ N(0, I / alpha)`` and noise precision ``beta``; alpha and beta are set by MacKay's fixed point on the
    SVD of ``F``. This follows ``LogME._fit_fixed_point`` of thuml/LogME (the version the authors and TLlib
    publish) step for step, constants included (see ``_LOGME_*``), so that the numbers compare with the
    literature's. Two of its choices matter:

    - It stops after at most 11 steps, converged or not.
    - ``D/2 log(alpha)`` counts all D prior dimensions, but ``-1/2 log|A|`` sums ``log(alpha + beta s_i^2)`` only
      over the singular values it keeps: min(N, D) of them (with N > D, those above 1e-10). Every missing one
      would contribute ``-1/2 log(alpha)``, so whenever rank(F) < D (always when N < D) the score carries an
      extra ``(D - rank) / (2N) log(alpha)``. That term is why it is large when N < D (22.79 at N=100, D=512 on
      Gaussian clusters, against 0.74 for ``logme_exact``) and why, there, it grows with the feature scale (by
      ``(D - N) / N * log(c)`` for features multiplied by c). With N > D and full rank it equals the evidence.

    Args:
        features: ``[N, D]`` frozen features of the target samples (penultimate layer of the source model).
        labels: ``[N]`` integer target labels in ``[0, num_classes)``; every class needs a sample.
        num_classes: number of target classes; ``labels.max() + 1`` when None.

    Returns:
        The score; higher means the features suit the target better.

    >>> x = torch.tensor([[0.0], [0.1], [1.0], [1.1]])
    >>> logme(x, torch.tensor([0, 0, 1, 1])) > logme(x, torch.tensor([0, 1, 0, 1]))
    True
    """
    _check_matrix(features, "features", "[N, D]")
    n, d = features.shape
    k = _check_labels(labels, n, num_classes, "row of features")
    f = features.to(torch.float64)
    y = _class_targets(labels, k, f)
    u, s, _ = torch.linalg.svd(f, full_matrices=False)  # the authors take it from F^T F when N > D: same values
    if s[0] == 0:
        raise ValueError("features must not be all zero")
    if n > d:
        keep = s > _LOGME_RANK_TOL
        u, s = u[:, keep], s[keep]
    sigma = (s**2)[:, None]  # [r, 1]
    x2 = (u.T @ y) ** 2  # [r, K] targets in the left singular basis, squared
    outside = (y**2).sum(0) - x2.sum(0)  # [K] the part of each target outside the span of F

    alpha = torch.ones(k, dtype=torch.float64, device=f.device)
    beta, m2, res2 = torch.ones_like(alpha), torch.zeros_like(alpha), torch.zeros_like(alpha)
    done = torch.zeros(k, dtype=torch.bool, device=f.device)
    for _ in range(_LOGME_STEPS):  # every class runs its own loop; a class that has stopped is frozen
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(0)
        step_m2 = (sigma * x2 / (t + sigma) ** 2).sum(0)  # ||m||^2 at this t
        step_res2 = (x2 / (1 + sigma / t) ** 2).sum(0) + outside  # ||F m - y||^2 at this t
        new_alpha = gamma / (step_m2 + _LOGME_EPS)
        new_beta = (n - gamma) / (step_res2 + _LOGME_EPS)
        live = ~done
        alpha, beta = alpha.where(done, new_alpha), beta.where(done, new_beta)
        m2, res2 = m2.where(done, step_m2), res2.where(done, step_res2)
        done = done | (live & ((new_alpha / new_beta - t).abs() / t <= _LOGME_RTOL))
        if done.all():
            break
    # as published: alpha, beta of the last update, with m and the residual of the t before it
    evidence = (
        d / 2 * torch.log(alpha)
        + n / 2 * torch.log(beta)
        - torch.log(alpha + beta * sigma).sum(0) / 2
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )
    return float((evidence / n).mean())


def logme_exact(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> float:
    """LogME's model with its evidence maximised and every prior dimension counted (no rank truncation).

    The model and the score's meaning are those of ``logme``; this computes the log evidence the paper writes
    down, ``log N(y; 0, F F^T / alpha + I / beta)`` maximised over alpha and beta, iterated to convergence. It
    equals ``logme`` (up to the authors' 11-step cap) when N > D and F has full rank. When N < D ``logme`` adds
    ``(D - N) / (2N) log(alpha)`` (see there); this one stays of order 1, is invariant to the feature scale, and
    is checked against a direct maximisation of the N x N Gaussian likelihood. Kept as ``transfer/logme_exact``
    so a study can tell whether that term helps or hurts the ranking when N < D.

    For each class ``k`` the one-hot column ``y = [labels == k]`` is modelled as ``y = F w + noise`` with a
    prior ``w ~ N(0, I / alpha)`` and noise precision ``beta``. The log evidence ``log p(y | F, alpha, beta)``
    measures how well *some* linear head on frozen features explains the target, with the complexity of that
    head paid for, so it needs no validation split and no training. ``alpha`` and ``beta`` are set by the
    MacKay fixed-point iteration, which costs O(min(N, D)) per class and step on the SVD of ``F`` computed
    once.

    The score is invariant to the order of samples, to a rescaling of the features and to an orthogonal
    transform of the feature space. Features are used as given (no centring): the model has no bias term.

    Args:
        features: ``[N, D]`` frozen features of the target samples (penultimate layer of the source model).
        labels: ``[N]`` integer target labels in ``[0, num_classes)``; every class needs a sample, because the
            evidence of an all-zero target grows without bound.
        num_classes: number of target classes; ``labels.max() + 1`` when None.
        max_iter: the most fixed-point steps; a warning is logged if some class has not converged by then.
        tol: converged when the log evidence per sample of every class changes by less than this in a step.

    Returns:
        The score; higher means the features suit the target better. Noisy real features give values of order
        1; features that fit the one-hot targets exactly with rank below N (say, the labels themselves) have
        unbounded evidence, and the score then reflects where ``beta`` is capped (about 30 for that example).

    >>> x = torch.tensor([[0.0], [0.1], [1.0], [1.1]])
    >>> logme_exact(x, torch.tensor([0, 0, 1, 1])) > logme_exact(x, torch.tensor([0, 1, 0, 1]))
    True
    """
    _check_matrix(features, "features", "[N, D]")
    n = features.shape[0]
    k = _check_labels(labels, n, num_classes, "row of features")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")

    f = features.to(torch.float64)
    y = _class_targets(labels, k, f)
    # The economy SVD has r = min(N, D) singular values; F^T F has D eigenvalues, the other D - r zero. Singular
    # values that are zero in floating point are dropped the same way. A zero eigenvalue adds log(alpha) to
    # log|A| and D/2 log(alpha) has one log(alpha) per dimension, so they cancel: the evidence below is written
    # with log(1 + beta * sigma / alpha), where the padded zeros contribute exactly nothing.
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    if s[0] == 0:
        raise ValueError("features must not be all zero")
    keep = s > s[0] * max(f.shape) * torch.finfo(torch.float64).eps
    u, s = u[:, keep], s[keep] / s[0]  # unit spectral norm: the evidence is scale-invariant, alpha rescales
    sigma = (s**2)[:, None]  # [r, 1] non-zero eigenvalues of F^T F
    z = u.T @ y  # [r, K] targets in the left singular basis
    outside = ((y - u @ z) ** 2).sum(0)  # [K] part of each target no linear head can reach

    def step(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log evidence per sample [K] at these alpha, beta, and the next alpha, beta of the fixed point."""
        shrink = alpha / (alpha + beta * sigma)  # [r, K] how far the posterior mean pulls each direction to 0
        gamma = (1 - shrink).sum(0)  # effective number of well-determined parameters
        m2 = ((1 - shrink) * z / s[:, None]).pow(2).sum(0)  # ||m||^2
        res = (shrink * z).pow(2).sum(0) + outside  # ||F m - y||^2
        evidence = (
            n / 2 * torch.log(beta)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res
            - alpha / 2 * m2
            - torch.log1p(beta * sigma / alpha).sum(0) / 2
        )
        new_alpha = (gamma / m2.clamp_min(1 / _LIMIT)).clamp(1 / _LIMIT, _LIMIT)
        new_beta = ((n - gamma) / res.clamp_min(1 / _LIMIT)).clamp(1 / _LIMIT, _LIMIT)
        return evidence / n, new_alpha, new_beta

    alpha = torch.ones(k, dtype=torch.float64, device=f.device)
    beta = torch.ones_like(alpha)
    evidence, alpha, beta = step(alpha, beta)
    for _ in range(max_iter):
        new_evidence, alpha, beta = step(alpha, beta)
        # Stop on the objective, not on alpha and beta: when the features explain nothing of a class
        # (alpha -> inf) or fit it exactly (beta -> inf) the maximum is at the boundary and they never settle.
        change = (new_evidence - evidence).abs().max()
        evidence = new_evidence
        if change < tol:
            break
    else:
        log.warning("LogME (exact): the iteration did not converge in %d steps (last change %.2g)", max_iter, change)
    return float(evidence.mean())


def leep(source_probs: Tensor, labels: Tensor, num_classes: int | None = None) -> float:
    """LEEP: mean log-likelihood of the target labels under the source classifier followed by P(y | z).

    The source model's softmax ``theta_i(z)`` over its own ``Z`` classes, paired with the target labels, gives
    an empirical joint ``P(y, z) = 1/N sum_i theta_i(z) [y_i = y]`` and so a conditional ``P(y | z)``. A source
    whose outputs already sort the target classes (under any relabelling) makes ``sum_z P(y_i | z) theta_i(z)``
    close to 1, which predicts that fine-tuning it will do well.

    Args:
        source_probs: ``[N, Z]`` softmax outputs of the source model (with its own head) on the target samples;
            rows non-negative and summing to 1 within ``PROB_ATOL``.
        labels: ``[N]`` integer target labels in ``[0, num_classes)``.
        num_classes: number of target classes; ``labels.max() + 1`` when None. Classes without samples do not
            change the score.

    Returns:
        The score, at most 0 (reached when the source outputs determine the label); ``-H(y)``, the negative
        entropy of the target labels, for a source that carries no information (identical rows).

    >>> probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> leep(probs, torch.tensor([1, 0]))
    0.0
    """
    _check_matrix(source_probs, "source_probs", "[N, Z]")
    n = source_probs.shape[0]
    k = _check_labels(labels, n, num_classes, "row of source_probs")
    if (source_probs < 0).any():
        raise ValueError(f"source_probs must be non-negative, got minimum {float(source_probs.min()):.3g}")
    sums = source_probs.to(torch.float64).sum(1)
    worst = int((sums - 1).abs().argmax())
    if abs(float(sums[worst]) - 1) > PROB_ATOL:
        raise ValueError(
            f"rows of source_probs must sum to 1 (softmax outputs), got {float(sums[worst]):.6g} in row {worst}"
        )

    theta = source_probs.to(torch.float64)
    y = torch.nn.functional.one_hot(labels.long(), k).to(theta)
    joint = y.T @ theta / n  # [K, Z] P(y, z)
    marginal = joint.sum(0, keepdim=True)  # [1, Z] P(z)
    # A source class no sample puts mass on has P(z) = 0; its conditional is never used (theta_i(z) = 0).
    conditional = joint / marginal.where(marginal > 0, torch.ones_like(marginal))  # [K, Z] P(y | z)
    likelihood = (theta * conditional[labels.long()]).sum(1)  # [N] sum_z P(y_i | z) theta_i(z)
    return float(torch.log(likelihood).mean())


def nce(source_predictions: Tensor, labels: Tensor, num_classes: int | None = None) -> float:
    """NCE: the negative conditional entropy ``-H(Y | Z)`` of the target labels given the source's predictions.

    ``Z`` is the source model's hard prediction (argmax over its own classes) on each target sample. If the
    source classes sort the target classes (under any relabelling), knowing ``z`` leaves little doubt about
    ``y`` and ``H(Y | Z)`` is small. Tran et al. (ICCV 2019) show it bounds the loss of a transferred model;
    unlike LEEP it discards the source's confidence.

    Args:
        source_predictions: ``[N]`` integer source classes predicted for the target samples.
        labels: ``[N]`` integer target labels in ``[0, num_classes)``.
        num_classes: number of target classes; ``labels.max() + 1`` when None.

    Returns:
        The score in ``[-H(Y), 0]`` (nats): 0 when the prediction determines the label, ``-H(Y)`` when it says
        nothing about it (say, a constant prediction).

    >>> nce(torch.tensor([3, 3, 1, 1]), torch.tensor([0, 0, 1, 1]))
    0.0
    """
    n = source_predictions.numel() if isinstance(source_predictions, Tensor) else 0
    z_count = _check_labels(source_predictions, n, None, "sample", "source_predictions")
    k = _check_labels(labels, n, num_classes, "entry of source_predictions")
    joint = torch.bincount(labels.long() * z_count + source_predictions.long(), minlength=k * z_count)
    joint = joint.reshape(k, z_count).to(torch.float64) / n  # [K, Z] P(y, z)
    marginal = joint.sum(0, keepdim=True)  # [1, Z] P(z)
    seen = joint > 0  # 0 log 0 = 0
    return float((joint[seen] * torch.log(joint[seen] / marginal.expand_as(joint)[seen])).sum())


def hscore(features: Tensor, labels: Tensor, num_classes: int | None = None) -> float:
    """H-score: ``tr(cov(f)^+ cov(E[f | y]))``, how much of the feature variance lies between the classes.

    Bao et al. (ICIP 2019) derive it as the best achievable value of the HGR maximal-correlation objective for a
    linear head on these features; it is ``sum_i rho_i^2`` over the canonical correlations between features and
    one-hot labels, so it lies in ``[0, K - 1]`` and is invariant to any invertible linear map of the features.
    The inverse is a pseudo-inverse (eigenvalues below ``D * eps`` of the largest count as zero),
    as in the reference implementations, because ``cov(f)`` is singular whenever N <= D.

    That makes it uninformative when N <= D: features in general position then span every centred direction in
    sample space, the class indicators included, and the score is exactly ``K - 1`` for every source. Ibrahim et
    al. (2022) shrink ``cov(f)`` for that regime; this is the unshrunk score of the paper.

    Args:
        features: ``[N, D]`` frozen features of the target samples.
        labels: ``[N]`` integer target labels in ``[0, num_classes)``.
        num_classes: number of target classes; ``labels.max() + 1`` when None. Empty classes change nothing.

    Returns:
        The score in ``[0, K - 1]``; higher means more of the variance separates the classes.

    >>> hscore(torch.tensor([[0.0], [0.0], [1.0], [1.0]]), torch.tensor([0, 0, 1, 1]))
    1.0
    """
    _check_matrix(features, "features", "[N, D]")
    n = features.shape[0]
    k = _check_labels(labels, n, num_classes, "row of features")
    f = features.to(torch.float64)
    f = f - f.mean(0)
    y = torch.nn.functional.one_hot(labels.long(), k).to(f)
    means = (y.T @ f) / y.sum(0).clamp_min(1)[:, None]  # [K, D] class means
    g = means[labels.long()]  # [N, D] each sample replaced by its class mean
    # both covariances divide by the same count, which cancels; the 1/n keeps the matrices of order 1
    cov_f = f.T @ f / n
    cov_g = g.T @ g / n
    return float(torch.trace(torch.linalg.pinv(cov_f, hermitian=True) @ cov_g))


def knn_accuracy(features: Tensor, labels: Tensor, num_classes: int | None = None, *, k: int = KNN_K) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour vote under cosine similarity on frozen features.

    The simplest probe of whether a source's features already group the target classes: each sample is
    classified by the majority label of its ``k`` most cosine-similar other samples (a tie between classes goes
    to the smallest label, as in scikit-learn). No parameters are fitted, so nothing overfits N < D.

    Args:
        features: ``[N, D]`` frozen features of the target samples.
        labels: ``[N]`` integer target labels in ``[0, num_classes)``.
        num_classes: number of target classes; ``labels.max() + 1`` when None.
        k: neighbours that vote, at most ``N - 1``; default ``KNN_K``.

    Returns:
        The fraction of samples whose neighbours' vote is their label, in ``[0, 1]``.

    >>> knn_accuracy(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), torch.tensor([0, 0, 1, 1]), k=1)
    1.0
    """
    _check_matrix(features, "features", "[N, D]")
    n = features.shape[0]
    classes = _check_labels(labels, n, num_classes, "row of features")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n - 1:
        raise ValueError(f"k must be an int in [1, N - 1] = [1, {n - 1}], got {k!r}")
    f = torch.nn.functional.normalize(features.to(torch.float64), dim=1)
    similarity = f @ f.T
    similarity.fill_diagonal_(-math.inf)  # leave one out: a sample is not its own neighbour
    neighbours = similarity.topk(k, dim=1).indices  # [N, k]
    votes = torch.nn.functional.one_hot(labels.long()[neighbours], classes).sum(1)  # [N, K]
    return float((votes.argmax(1) == labels).to(torch.float64).mean())  # argmax: the first (smallest) of a tie


@torch.no_grad()
def score_model(model: nn.Module, datamodule: Any, source_head: bool) -> dict[str, float]:
    """Every transferability score that applies, on the target's training split, keyed by its metric name.

    This is what ``stage=score`` and ``stage=evaluate`` log: a ranking of candidate sources for one target before
    any fine-tuning. ``transfer/logme`` (as published), ``transfer/logme_exact``, ``transfer/hscore`` and
    ``transfer/knn`` (``KNN_K`` neighbours) score the backbone's features; ``transfer/leep`` and ``transfer/nce``
    need the source classifier, so they are left out when the head was re-initialised for other classes.
    """
    model.eval()
    features, probs, seen = [], [], []
    for batch in datamodule.loader("train"):  # in order, evaluation transform (streamed or on the device)
        images, labels = datamodule.prepare([part.to(model.device) for part in batch], train=False)
        pooled = model.backbone(images)
        features.append(pooled.flatten(1).float().cpu())  # multi-view backbones: views side by side
        probs.append(torch.softmax(model.head(pooled).float(), dim=1).cpu())
        seen.append(labels.cpu())
    labels, feats, k = torch.cat(seen), torch.cat(features), datamodule.num_classes
    scores = {
        "transfer/logme": logme(feats, labels, k),
        "transfer/logme_exact": logme_exact(feats, labels, k),
        "transfer/hscore": hscore(feats, labels, k),
        "transfer/knn": knn_accuracy(feats, labels, k, k=min(KNN_K, len(labels) - 1)),
    }
    if source_head:
        source_probs = torch.cat(probs)
        scores["transfer/leep"] = leep(source_probs, labels, k)
        scores["transfer/nce"] = nce(source_probs.argmax(1), labels, k)
    return scores
