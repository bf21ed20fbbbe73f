"""Backbones: any timm model as a headless feature extractor, and the multi-input variants built on it.

Every backbone maps images to pooled features (``num_features`` wide; ``[B, V, D]`` for one branch per view)
and names its blocks from input to output (:meth:`blocks`), which fine-tuning strategies and
``init.copy_blocks`` use; timm's own grouping (``group_matcher``) makes CNNs and ViTs alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import timm
import torch
from timm.models import group_modules, group_parameters
from torch import Tensor, nn

from transfuse.errors import ConfigError


class Block(NamedTuple):
    """One block of a backbone: the names of its parameters and of its modules (relative to the caller)."""

    params: list[str]
    modules: list[str]


class TimmBackbone(nn.Module):
    """A timm model created with ``num_classes=0``, so ``forward`` returns pooled features.

    Args:
        name: any name ``timm.list_models()`` knows.
        in_chans: input channels (timm adapts the stem).
        image_size: input side; models with a fixed input size (ViTs) are built for it.
        mean: normalisation the data should use (kept here so presets can follow the model).
        std: see ``mean``.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (``drop_rate``, ``drop_path_rate``...).
    """

    def __init__(
        self,
        name: str,
        in_chans: int = 3,
        image_size: int = 224,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.name, self.in_chans, self.image_size = name, in_chans, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.model_kwargs = dict(model_kwargs or {})
        self.model = self.create(pretrained=False)
        self.num_features: int = self.model.num_features

    def create(self, pretrained: bool) -> nn.Module:
        """Build the timm model this backbone wraps (``pretrained=True`` fetches hub weights)."""
        if not timm.is_model(self.name):
            raise ConfigError(f"timm has no model named {self.name!r} (see timm.list_models())")
        kwargs = dict(self.model_kwargs)
        default_cfg = timm.models.get_pretrained_cfg(self.name)
        if default_cfg is not None and default_cfg.fixed_input_size:
            kwargs.setdefault("img_size", self.image_size)
        return timm.create_model(self.name, pretrained=pretrained, num_classes=0, in_chans=self.in_chans, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def blocks(self, prefix: str = "") -> list[Block]:
        """The blocks from input to output by timm's coarse grouping, names prefixed with ``prefix``."""
        matcher = self.model.group_matcher(coarse=True)
        params = group_parameters(self.model, matcher)
        modules = group_modules(self.model, matcher)
        return [
            Block([f"{prefix}model.{n}" for n in params[i]], [f"{prefix}model.{n}" for n in modules.get(i, [])])
            for i in sorted(params)
        ]


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

    def blocks(self, prefix: str = "") -> list[Block]:
        """Block ``i`` of every branch joined into block ``i``, so strategies freeze the views alike."""
        merged: list[Block] = []
        for j, branch in enumerate(self.branches):
            for i, block in enumerate(branch.blocks(f"{prefix}branches.{j}.")):
                if i == len(merged):
                    merged.append(Block([], []))
                merged[i].params.extend(block.params)
                merged[i].modules.extend(block.modules)
        return merged
