"""Seeded, stratified index splits: the same seed always gives the same images in each split."""

from __future__ import annotations

import torch
from torch import Tensor

from transfuse.errors import ConfigError, DataError


def _class_permutations(labels: Tensor, seed: int) -> dict[int, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        out[c] = idx[torch.randperm(len(idx), generator=generator)]
    return out


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into (rest, held_out) with ``fraction`` of every class held out.

    Every class keeps at least one image on each side when it has two or more.

    >>> rest, held = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
    >>> len(rest), len(held)
    (6, 2)
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"split fraction must be in (0, 1), got {fraction}")
    rest, held = [], []
    for idx in _class_permutations(labels, seed).values():
        n_held = round(fraction * len(idx))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        rest.append(idx[n_held:])
    return torch.sort(torch.cat(rest)).values, torch.sort(torch.cat(held)).values


def per_class_subset(labels: Tensor, per_class: int, seed: int, class_names: list[str], setting: str) -> Tensor:
    """Pick ``per_class`` indices of every class in ``class_names`` (few-label targets).

    A class with fewer images, or none at all in this split, is refused: ``setting`` (e.g. ``val_per_class``)
    names the option the user has to change.
    """
    if per_class < 1:
        raise ConfigError(f"{setting} must be >= 1, got {per_class}")
    by_class = _class_permutations(labels, seed)
    chosen = []
    for c, name in enumerate(class_names):
        idx = by_class.get(c, labels[:0])
        if len(idx) < per_class:
            raise DataError(f"class {name!r} has {len(idx)} images in this split, fewer than {setting}={per_class}")
        chosen.append(idx[:per_class])
    return torch.sort(torch.cat(chosen)).values
