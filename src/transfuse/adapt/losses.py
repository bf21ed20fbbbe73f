"""Losses that pull source and target features together for unsupervised domain adaptation.

Two families: adversarial alignment (a domain discriminator trained through a gradient reversal layer, DANN) and
statistic matching (second moments with CORAL, kernel mean embeddings with MMD). The proxy A-distance measures how
far apart two feature sets still are, so a run can report whether adaptation actually aligned them.

Every function takes features as ``[N, D]`` (source) and ``[M, D]`` (target) tensors; the batch sizes may differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from transfuse.errors import ConfigError


def _check_features(source: Any, target: Any) -> None:
    """Raise if ``source`` and ``target`` are not two feature matrices of the same width with 2+ rows each."""
    for name, value in (("source", source), ("target", target)):
        if not isinstance(value, Tensor):
            raise TypeError(f"expected {name} features as a torch.Tensor of shape [N, D], got {type(value).__name__}")
        if value.ndim != 2:
            raise ValueError(f"expected {name} features of shape [N, D] (2-D), got shape {tuple(value.shape)}")
        if value.shape[0] < 2:
            raise ValueError(f"expected at least 2 rows of {name} features, got shape {tuple(value.shape)}")
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"expected source and target features of the same width, got {source.shape[1]} and {target.shape[1]}"
            f" (shapes {tuple(source.shape)} and {tuple(target.shape)})"
        )


class GradientReversal(torch.autograd.Function):
    """Identity forward, gradient times ``-lambda_`` backward.

    The feature extractor below it then *maximises* the loss that the domain classifier above it minimises,
    so one backward pass trains both players of the DANN min-max game (Ganin & Lempitsky, 2015).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = float(lambda_)
        # a view, not ``x`` itself: autograd needs a distinct output to attach this node's backward to
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * -ctx.lambda_, None


def grad_reverse(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """Functional gradient reversal: returns ``x`` unchanged, reverses and scales its gradient by ``lambda_``.

    >>> x = torch.ones(2, requires_grad=True)
    >>> grad_reverse(x, 0.5).sum().backward()
    >>> x.grad
    tensor([-0.5000, -0.5000])
    """
    return GradientReversal.apply(x, lambda_)


class GradientReversalLayer(nn.Module):
    """Gradient reversal as a module, so it can sit in an ``nn.Sequential`` or be built from a config.

    ``lambda_`` is a plain attribute: a callback or training step sets it each step (e.g. from
    :func:`ganin_lambda`) to ramp up the adversarial signal while the discriminator is still untrained.
    """

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


def ganin_lambda(progress: float, gamma: float = 10.0) -> float:
    """The DANN schedule ``2 / (1 + exp(-gamma * p)) - 1`` for training progress ``p`` in [0, 1].

    It rises from 0 to almost 1, which keeps the noisy gradients of an untrained discriminator from disturbing
    the features early on (Ganin et al., 2016, section 5.2.2).

    >>> ganin_lambda(0.0)
    0.0
    >>> round(ganin_lambda(1.0), 6)
    0.999909
    """
    if not 0.0 <= progress <= 1.0:  # also rejects NaN
        raise ValueError(f"expected training progress in [0, 1], got {progress}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainDiscriminator(nn.Module):
    """Predicts whether a feature vector comes from the source domain (a logit; source is 1).

    Two hidden layers of Linear-ReLU-Dropout then one logit, the domain classifier of Ganin et al. (2016);
    they use 1024 hidden units on Office, 256 is enough for the small heads this project trains.
    """

    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        if in_features < 1 or hidden < 1:
            raise ConfigError(f"adapt.hidden and the feature width must be positive, got {in_features} and {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"adapt.dropout must be in [0, 1), got {dropout}")
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Domain logits of shape ``[N, 1]``."""
        return self.net(features)


def dann_loss(
    source_features: Tensor,
    target_features: Tensor,
    discriminator: Callable[[Tensor], Tensor],
    grl: Callable[[Tensor], Tensor],
) -> Tensor:
    """Domain-adversarial loss: binary cross-entropy of ``discriminator`` on ``grl(features)``.

    Source rows are labelled 1, target rows 0. Each domain's mean loss counts half, so an unequal batch split
    does not let one domain dominate. Minimising it trains the discriminator; through ``grl`` (a
    :class:`GradientReversalLayer`) the same backward pass pushes the features to confuse it. Pass
    ``nn.Identity()`` as ``grl`` to train the discriminator alone.
    """
    _check_features(source_features, target_features)
    n = source_features.shape[0]
    # one discriminator call on both domains, so any batch-norm inside it sees the pooled batch
    logits = discriminator(grl(torch.cat([source_features, target_features])))
    if logits.numel() != n + target_features.shape[0]:
        raise ValueError(
            f"expected the discriminator to return one logit per row ({n + target_features.shape[0]}),"
            f" got shape {tuple(logits.shape)}"
        )
    logits = logits.reshape(-1)
    source_loss = F.binary_cross_entropy_with_logits(logits[:n], torch.ones_like(logits[:n]))
    target_loss = F.binary_cross_entropy_with_logits(logits[n:], torch.zeros_like(logits[n:]))
    return (source_loss + target_loss) / 2


def _covariance(x: Tensor) -> Tensor:
    """Unbiased (``N - 1``) covariance of the columns of ``x``."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (x.shape[0] - 1)


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 D^2)`` between the feature covariances (Sun & Saenko, 2016).

    It aligns second-order statistics only: a pure shift of the mean costs nothing. The ``4 D^2`` scaling keeps
    the loss comparable across feature widths.
    """
    _check_features(source, target)
    width = source.shape[1]
    return (_covariance(source) - _covariance(target)).pow(2).sum() / (4 * width**2)


def mmd_loss(
    source: Tensor,
    target: Tensor,
    kernel_mul: float = 2.0,
    kernel_num: int = 5,
    bandwidth: float | None = None,
) -> Tensor:
    """Multi-kernel MMD^2 between the two samples with a sum of Gaussian kernels (DAN, Long et al., 2015).

    The kernels are ``exp(-||x - y||^2 / b_i)`` with ``b_i = base * kernel_mul ** (i - kernel_num // 2)``, a
    geometric family around ``base``: several scales make the loss sensitive to differences that one badly chosen
    bandwidth would miss. ``base`` is ``bandwidth`` if given, else the mean squared distance between distinct rows
    of the pooled batch, detached so that the features cannot shrink the loss by moving the bandwidth.

    This is the biased (V-statistic) estimate ``mean K_ss + mean K_tt - 2 mean K_st``, diagonal included: it is
    never negative (up to rounding) and is exactly 0 for identical samples, but it is biased upwards on small
    batches, so compare values only at equal batch sizes.
    """
    _check_features(source, target)
    if kernel_num < 1:
        raise ConfigError(f"adapt.kernel_num must be >= 1, got {kernel_num}")
    if not kernel_mul > 0:
        raise ConfigError(f"adapt.kernel_mul must be > 0, got {kernel_mul}")
    if bandwidth is not None and not bandwidth > 0:
        raise ConfigError(f"adapt.bandwidth must be > 0 or null, got {bandwidth}")
    pooled = torch.cat([source, target])
    # direct differences rather than the |x|^2 + |y|^2 - 2xy expansion: exact zeros for equal rows, no cancellation
    sq_dist = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    if bandwidth is None:
        total = pooled.shape[0]
        base = sq_dist.detach().sum() / (total * total - total)
        base = base.clamp_min(torch.finfo(base.dtype).tiny)  # all rows equal: any bandwidth gives MMD 0
    else:
        base = torch.as_tensor(bandwidth, dtype=sq_dist.dtype, device=sq_dist.device)
    kernel = sum(torch.exp(-sq_dist / (base * kernel_mul ** (i - kernel_num // 2))) for i in range(kernel_num))
    n = source.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def proxy_a_distance(source_features: Tensor, target_features: Tensor, seed: int = 0) -> float:
    """Proxy A-distance ``2 * (1 - 2 * err)``: how well a linear classifier tells the two domains apart.

    ``err`` is the held-out error of a standardised logistic regression trained on a stratified half of the
    pooled features and tested on the other half (Ben-David et al., 2007; Ganin et al., 2016 use it to show
    that DANN features are harder to separate). 0 means indistinguishable, 2 perfectly separable; values are
    clipped to [0, 2] since an error above chance only means the domains are indistinguishable.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_features(source_features, target_features)
    features = torch.cat([source_features, target_features]).detach().cpu().double().numpy()
    labels = np.concatenate([np.ones(source_features.shape[0]), np.zeros(target_features.shape[0])])
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.5, stratify=labels, random_state=seed
    )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    classifier.fit(x_train, y_train)
    error = 1.0 - classifier.score(x_test, y_test)
    return float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))
