"""What a fusion method returns: the fused model's scores, its inference path and what it holds (its own module,
so that the pools that build it and the methods that return it do not import each other)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class Fused:
    """A fused model: its scores per split, its inference path and the networks it runs (its cost)."""

    logits: dict[str, Tensor]
    predict: Callable[[Tensor], Tensor]
    modules: list[nn.Module]
    used: list[int]
    weights: dict[str, float] = field(default_factory=dict)
    state_dict: dict[str, Tensor] | None = None
    #: a multi-task merge's network of each task (the merged backbone with that task's head), by task name
    task_states: dict[str, dict[str, Tensor]] | None = None
