"""What a fusion works on: the member runs and the data, with each member's predictions computed once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from transfuse.fusion.members import Member


@dataclass
class Pool:
    """What is fused: the members, the raw images and labels of each split, the members' logits on the
    held-out splits (``logits[split]`` is ``[M, N, C]``), computed once and shared by every method, and, for the
    methods that merge task vectors, the members' shared source weights (keyed like a member's network)."""

    members: list[Member]
    images: dict[str, Tensor]
    labels: dict[str, Tensor]
    logits: dict[str, Tensor]
    source: dict[str, Tensor] | None = None

    def accuracy(self, logits: Tensor, split: str) -> float:
        return float((logits.argmax(-1) == self.labels[split]).float().mean())

    def member_accuracy(self, split: str) -> list[float]:
        return [self.accuracy(member_logits, split) for member_logits in self.logits[split]]

    @classmethod
    def predict(
        cls,
        members: list[Member],
        images: dict[str, Tensor],
        labels: dict[str, Tensor],
        source: dict[str, Tensor] | None = None,
    ) -> Pool:
        """Run every member once over the held-out splits (``val``, ``test``); every method reuses the logits."""
        held_out = [split for split in ("val", "test") if split in images]
        logits = {split: torch.stack([m.predict(images[split]) for m in members]) for split in held_out}
        return cls(members, images, labels, logits, source)
