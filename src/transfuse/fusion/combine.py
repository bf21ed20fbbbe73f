"""Decision-level fusion: ways to combine the class scores of M models, ``[M, N, C]`` logits -> ``[N, C]``.

Every rule returns scores whose softmax is the fused class distribution (log-probabilities where the rule
averages probabilities), so accuracy, F1 and calibration are measured the same way for all of them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from transfuse.errors import FusionError


def _check(logits: Tensor) -> None:
    if logits.ndim != 3 or logits.shape[0] == 0:
        raise FusionError(f"expected member logits [M, N, C] with M >= 1, got {tuple(logits.shape)}")


def logit_mean(logits: Tensor) -> Tensor:
    """Mean of the members' logits."""
    _check(logits)
    return logits.mean(dim=0)


def prob_mean(logits: Tensor) -> Tensor:
    """Log of the mean of the members' softmax probabilities."""
    _check(logits)
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - np.log(logits.shape[0])


def vote(logits: Tensor) -> Tensor:
    """Majority vote: log of each class's share of the votes, ties broken by the mean probability.

    The tie-break adds at most a thousandth of a vote, so it never overturns a majority.
    """
    _check(logits)
    m, _, c = logits.shape
    votes = torch.nn.functional.one_hot(logits.argmax(dim=-1), c).sum(dim=0).to(logits.dtype)  # [N, C]
    share = (votes + 1e-3 * torch.softmax(logits, dim=-1).mean(dim=0)) / (m + 1e-3)
    return torch.log(share)


def weighted(logits: Tensor, weights: Tensor) -> Tensor:
    """Log of the weighted mean of the members' probabilities (``weights`` sum to one)."""
    _check(logits)
    if weights.shape != (logits.shape[0],):
        raise FusionError(f"{len(weights)} weights for {logits.shape[0]} members")
    log_probs = torch.log_softmax(logits, dim=-1) + torch.log(weights.clamp_min(1e-12)).view(-1, 1, 1)
    return torch.logsumexp(log_probs, dim=0)


def fit_weights(logits: Tensor, labels: Tensor, steps: int = 300, lr: float = 0.1) -> Tensor:
    """Member weights on the simplex that minimise the negative log-likelihood of :func:`weighted` on
    held-out data (softmax-parametrised, optimised with Adam from uniform weights)."""
    _check(logits)
    logits = logits.detach().float()
    theta = torch.zeros(logits.shape[0], requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(weighted(logits, torch.softmax(theta, 0)), labels)
        loss.backward()
        optimizer.step()
    return torch.softmax(theta.detach(), 0)


class Stacker:
    """Stacking: a multinomial logistic regression trained on the members' held-out log-probabilities.

    Args:
        C: inverse L2 regularisation strength of scikit-learn's ``LogisticRegression``.
        max_iter: solver iterations.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C, self.max_iter = C, max_iter
        self.model = None
        self.num_classes = 0

    @staticmethod
    def features(logits: Tensor) -> np.ndarray:
        """``[M, N, C]`` logits -> ``[N, M * C]`` log-probabilities, member after member."""
        _check(logits)
        log_probs = torch.log_softmax(logits.detach().float(), dim=-1)
        return log_probs.permute(1, 0, 2).reshape(logits.shape[1], -1).numpy()

    def fit(self, logits: Tensor, labels: Tensor) -> Stacker:
        from sklearn.linear_model import LogisticRegression

        if len(torch.unique(labels)) < 2:
            raise FusionError("stacking needs held-out labels of at least two classes")
        self.num_classes = logits.shape[-1]
        self.model = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self.features(logits), labels.numpy())
        return self

    def __call__(self, logits: Tensor) -> Tensor:
        """Log-probabilities ``[N, C]``; a class absent from the held-out labels gets probability ~0."""
        if self.model is None:
            raise FusionError("the stacker has not been fitted")
        probs = np.full((logits.shape[1], self.num_classes), 1e-12)
        probs[:, self.model.classes_] = self.model.predict_proba(self.features(logits))
        return torch.log(torch.as_tensor(probs, dtype=torch.float32))
