"""Multi-input models: several views of a sample through one backbone (early fusion) or one branch per
view (feature and late fusion), joined by a fusion head.

Branch backbones return ``[B, V, D]``; every fusion head maps that (or ``[B, D]``, one view) to logits, so
the same head works with one, two or three views and single-view baselines come from the same configs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from transfuse.errors import ConfigError
from transfuse.models.backbone import TimmBackbone


class EarlyFusion(TimmBackbone):
    """The views stacked as channels into one timm backbone (``in_chans`` = views x channels per view)."""

    def __init__(self, views: int, in_chans: int = 3, **kwargs: Any) -> None:
        self.views, self.view_chans = views, in_chans
        super().__init__(in_chans=views * in_chans, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 5:
            x = x.flatten(1, 2)
        if x.shape[1] != self.in_chans:
            raise ConfigError(f"early fusion of {self.views} views expects {self.in_chans} channels, got {x.shape[1]}")
        return self.model(x)


class ViewBranches(nn.Module):
    """One timm backbone per view (``shared=False``) or one shared by all views; returns ``[B, V, D]``.

    Args:
        views: number of views.
        shared: one set of weights for every view (a Siamese branch) or a backbone per view.
        branch_weights: per branch, where its weights start (``init.weights`` syntax, e.g. ``runs:/<id>`` of a
            single-view run), or None for a fresh branch.
        **kwargs: as for :class:`TimmBackbone` (name, in_chans, image_size, mean, std, model_kwargs).
    """

    def __init__(
        self, views: int, shared: bool = True, branch_weights: list[str | None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__()
        if views < 1:
            raise ConfigError(f"views must be at least 1, got {views}")
        branches = 1 if shared else views
        if branch_weights is not None and len(branch_weights) != branches:
            raise ConfigError(f"{len(branch_weights)} branch_weights for {branches} branch(es) (shared={shared})")
        #: per branch, an ``init.weights`` source (a run, a filter, a file) or None; loaded by the training flow
        self.branch_weights = list(branch_weights or [])
        self.views, self.shared = views, shared
        self.branches = nn.ModuleList([TimmBackbone(**kwargs) for _ in range(1 if shared else views)])
        self.num_features: int = self.branches[0].num_features
        self.name = self.branches[0].name

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(1)
        if x.shape[1] != self.views:
            raise ConfigError(f"{self.views} branches but the batch has {x.shape[1]} views")
        if self.shared:
            return self.branches[0](x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return torch.stack([branch(x[:, i]) for i, branch in enumerate(self.branches)], dim=1)


def _views(features: Tensor) -> Tensor:
    return features.unsqueeze(1) if features.ndim == 2 else features


class ConcatHead(nn.Module):
    """Branch features concatenated, then one linear layer."""

    def __init__(self, in_features: int, num_classes: int, views: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(views * in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(_views(features).flatten(1)))


class SumHead(nn.Module):
    """Branch features summed, then one linear layer (order-free; any number of views)."""

    def __init__(self, in_features: int, num_classes: int, views: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(_views(features).sum(dim=1)))


class GatedHead(nn.Module):
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


class AttentionHead(nn.Module):
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


class BilinearHead(nn.Module):
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


class LateHead(nn.Module):
    """Late fusion: a classifier per branch, their logits averaged."""

    def __init__(self, in_features: int, num_classes: int, views: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.ModuleList([nn.Linear(in_features, num_classes) for _ in range(views)])

    def forward(self, features: Tensor) -> Tensor:
        x = self.dropout(_views(features))
        return torch.stack([fc(x[:, i]) for i, fc in enumerate(self.fc[: x.shape[1]])]).mean(dim=0)
