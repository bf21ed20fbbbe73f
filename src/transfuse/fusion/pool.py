"""What a fusion works on: the member runs and the data, with each member's predictions computed once.

Two kinds of pool: :class:`Pool`, every member on one dataset (ensembles, soups, students), and
:class:`~transfuse.fusion.tasks.TaskPool`, one member per task, each on its own dataset (multi-task merging).
Weight-space methods only talk to a pool through :meth:`Pool.soup`, :meth:`Pool.score`, :meth:`Pool.fused`,
:meth:`Pool.fisher_inputs` and :meth:`Pool.member_accuracy`, so one merge serves both kinds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from transfuse.fusion.fused import Fused
from transfuse.fusion.members import Member


def batches(images: Tensor, size: int = 256) -> list[Tensor]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def fisher_batches(
    member: Member, raw: Tensor, labels: Tensor, true_labels: bool
) -> tuple[list[Tensor], list[Tensor] | None]:
    """Raw images through ``member``'s transform in batches of 64 (on its device), with their labels when
    ``true_labels``: what :func:`~transfuse.fusion.merging.diagonal_fisher` takes."""
    device = next(member.net.parameters()).device
    inputs = [member.transform(batch.to(device), train=False) for batch in batches(raw, 64)]
    return inputs, (batches(labels, 64) if true_labels else None)


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

    #: whether the members' heads are merged with their backbones (one task), or each task keeps its own
    merges_heads = True

    def accuracy(self, logits: Tensor, split: str) -> float:
        return float((logits.argmax(-1) == self.labels[split]).float().mean())

    def member_accuracy(self, split: str) -> list[float]:
        """Each member alone, scored as a fused model would be."""
        return [self.accuracy(member_logits, split) for member_logits in self.logits[split]]

    def states(self) -> list[dict[str, Tensor]]:
        """What a weight-space method merges: every member's whole network."""
        return [m.net.state_dict() for m in self.members]

    def soup(self, state: dict[str, Tensor], reset_bn: bool) -> Member:
        """A network of member 0's architecture holding ``state``; with ``reset_bn``, its BatchNorm statistics
        re-estimated on the training images (:func:`~transfuse.fusion.merging.reset_bn`)."""
        from transfuse.fusion.merging import reset_bn as re_estimate

        member = copy.copy(self.members[0])
        member.net = copy.deepcopy(member.net)
        member.net.load_state_dict(state)
        if reset_bn:
            re_estimate(member.net, batches(self.images["train"]), lambda x: member.transform(x, train=False))
        member.net.eval()
        return member

    def score(self, model: Member, split: str = "val") -> float:
        """The accuracy of a model made by :meth:`soup` on ``split``."""
        return self.accuracy(model.predict(self.images[split]), split)

    def fused(self, model: Member, used: list[int], weights: dict[str, float]) -> Fused:
        """A model made by :meth:`soup` as the result of a fusion, with its logits on the held-out splits."""
        logits = {split: model.predict(self.images[split]) for split in self.logits}
        return Fused(logits, model.predict, [model.net], used, weights, model.net.state_dict())

    def fisher_inputs(self, i: int, count: int, true_labels: bool) -> tuple[list[Tensor], list[Tensor] | None]:
        """Member ``i``'s network inputs for its Fisher information: the first ``count`` training images through
        its transform, in batches, with their labels when ``true_labels``."""
        return fisher_batches(self.members[i], self.images["train"][:count], self.labels["train"][:count], true_labels)

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
