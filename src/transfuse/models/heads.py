"""Every classification head: single-view heads and the fusion heads of multi-input models.

A head maps pooled features (``[B, D]``, or ``[B, V, D]`` from one branch per view) to logits. Its
class-dependent layer is :attr:`Head.classifier`: loading weights re-initialises exactly that layer when the
classes change, whatever else the head holds. Fusion heads take ``views`` and also accept one view, so
single-view baselines come from the same configs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Head(nn.Module):
    """Base of every head: ``fc`` is its class-dependent layer (a linear layer, or one per view)."""

    fc: nn.Module

    @property
    def classifier(self) -> nn.Module:
        """The layer whose outputs are the classes (re-initialised when a source has other classes)."""
        return self.fc


class LinearHead(Head):
    """Dropout then one linear layer: the head of a linear probe."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(features))


class MLPHead(Head):
    """A hidden layer (norm, activation, dropout) before the classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.hidden(features))


def _views(features: Tensor) -> Tensor:
    return features.unsqueeze(1) if features.ndim == 2 else features


class ConcatHead(Head):
    """Branch features concatenated, then one linear layer."""

    def __init__(self, in_features: int, num_classes: int, views: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(views * in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(_views(features).flatten(1)))


class SumHead(Head):
    """Branch features summed, then one linear layer (order-free; any number of views)."""

    def __init__(self, in_features: int, num_classes: int, views: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(_views(features).sum(dim=1)))


class GatedHead(Head):
    """Learned per-branch weights: a gate reads all branches and softly weights each, per sample."""

    def __init__(self, in_features: int, num_classes: int, views: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(views * in_features, views)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        self.last_weights: Tensor | None = None

    def forward(self, features: Tensor) -> Tensor:
        x = _views(features)
        weights = torch.softmax(self.gate(x.flatten(1)), dim=-1)  # [B, V]
        self.last_weights = weights.detach()
        return self.fc(self.dropout((weights.unsqueeze(-1) * x).sum(dim=1)))


class AttentionHead(Head):
    """A small transformer over the branch tokens (plus a learned class token and view embeddings)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        views: int = 1,
        dim: int = 128,
        heads: int = 4,
        layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.project = nn.Linear(in_features, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.view_embedding = nn.Parameter(torch.randn(1, views, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        x = _views(features)
        tokens = self.project(x) + self.view_embedding[:, : x.shape[1]]
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        return self.fc(self.norm(self.encoder(tokens)[:, 0]))


class BilinearHead(Head):
    """Low-rank bilinear pooling (Kim et al. 2017): the element-wise product of each branch's rank-r
    projection, so every pair of views interacts multiplicatively at O(V * D * r) parameters."""

    def __init__(
        self, in_features: int, num_classes: int, views: int = 1, rank: int = 256, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.project = nn.ModuleList([nn.Linear(in_features, rank) for _ in range(views)])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(rank, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        x = _views(features)
        joint = torch.ones(len(x), self.fc.in_features, device=x.device, dtype=x.dtype)
        for i, project in enumerate(self.project[: x.shape[1]]):
            joint = joint * torch.tanh(project(x[:, i]))
        return self.fc(self.dropout(joint))


class LateHead(Head):
    """Late fusion: a classifier per branch, their logits averaged."""

    def __init__(self, in_features: int, num_classes: int, views: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.ModuleList([nn.Linear(in_features, num_classes) for _ in range(views)])

    def forward(self, features: Tensor) -> Tensor:
        x = self.dropout(_views(features))
        return torch.stack([fc(x[:, i]) for i, fc in enumerate(self.fc[: x.shape[1]])]).mean(dim=0)
