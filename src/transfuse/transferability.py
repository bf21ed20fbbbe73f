"""Transferability scores: rank candidate source checkpoints for a target without fine-tuning any of them.

Both scores need one forward pass of the target training set through each frozen source model and no
training, so ranking many checkpoints costs minutes instead of a fine-tuning sweep per candidate. Higher
is better for both; only the ranking of sources on the same target data means anything.

- ``logme`` scores penultimate features (``forward_head(x, pre_logits=True)``): how well a Bayesian linear
  model on them explains the labels (You et al., ICML 2021).
- ``leep`` scores the source model's own softmax outputs: how well its source classes predict the target
  classes through their empirical conditional (Nguyen et al., ICML 2020).

Both are plain functions on tensors; they compute in float64 on the device of their inputs.
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
#: alpha and beta stay inside [1 / LIMIT, LIMIT] (features are rescaled to unit spectral norm first, so this is
#: relative); beta runs to the upper bound when the features fit a class exactly, as N <= D features of rank N do
_LIMIT = 1e30


def _check_labels(labels: Tensor, n: int, num_classes: int | None, what: str) -> int:
    """Validate integer labels of ``n`` samples and return the number of classes."""
    if not isinstance(labels, Tensor) or labels.ndim != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D tensor [N], got {shape}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() != n:
        raise ValueError(f"labels must have one entry per row of {what} ({n}), got {labels.numel()}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise ValueError(f"num_classes must be an int or None, got {num_classes!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"labels must be >= 0, got {low}")
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


def logme(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> float:
    """LogME: mean over classes of the maximised log evidence per sample of a Bayesian linear model.

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
    >>> logme(x, torch.tensor([0, 0, 1, 1])) > logme(x, torch.tensor([0, 1, 0, 1]))
    True
    """
    _check_matrix(features, "features", "[N, D]")
    n = features.shape[0]
    k = _check_labels(labels, n, num_classes, "features")
    counts = torch.bincount(labels, minlength=k)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"every class needs at least one sample for LogME, got none for classes {missing}")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")

    f = features.to(torch.float64)
    y = torch.nn.functional.one_hot(labels.long(), k).to(f)
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
        log.warning("LogME: the evidence iteration did not converge in %d steps (last change %.2g)", max_iter, change)
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
    k = _check_labels(labels, n, num_classes, "source_probs")
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


@torch.no_grad()
def score_model(model: nn.Module, datamodule: Any, source_head: bool) -> dict[str, float]:
    """LogME of the backbone's features (and LEEP of the source head) on the target's training split.

    This is what ``stage=score`` and ``stage=evaluate`` log as ``transfer/logme`` and ``transfer/leep``: a
    ranking of candidate sources for one target before any fine-tuning. LEEP needs the source classifier, so it
    is left out when the head was re-initialised for other classes.
    """
    model.eval()
    features, probs, seen = [], [], []
    for batch in datamodule.loader("train"):  # in order, evaluation transform (streamed or on the device)
        images, labels = datamodule.prepare([part.to(model.device) for part in batch], train=False)
        pooled = model.backbone(images)
        features.append(pooled.flatten(1).float().cpu())  # multi-view backbones: views side by side
        probs.append(torch.softmax(model.head(pooled).float(), dim=1).cpu())
        seen.append(labels.cpu())
    labels = torch.cat(seen)
    scores = {"transfer/logme": logme(torch.cat(features), labels, datamodule.num_classes)}
    if source_head:
        scores["transfer/leep"] = leep(torch.cat(probs), labels, datamodule.num_classes)
    return scores
