"""Weight-space fusion: model soups (Wortsman et al. 2022), the average of fine-tuned weights.

Averaging only makes sense for models of one architecture fine-tuned from one shared initialisation (they
then sit in one basin of the loss); members that are not are refused, naming the member and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from transfuse.errors import FusionError
from transfuse.fusion.members import Member


def average_state_dicts(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of floating-point tensors; integer buffers (BatchNorm's batch count) from the first."""
    if not states:
        raise FusionError("a soup needs at least one member")
    soup = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            soup[key] = torch.stack([s[key].float() for s in states]).mean(dim=0).to(first.dtype)
        else:
            soup[key] = first.clone()
    return soup


def check_soup_members(members: Sequence[Member], require_shared_init: bool = True, heads: bool = True) -> None:
    """Refuse members whose weights cannot be averaged with the first one's, saying which and why; with
    ``heads=False`` (multi-task merging, each task keeps its head) only the backbones are compared."""
    first = members[0]

    def weights(member: Member) -> dict[str, Tensor]:
        return {k: v for k, v in member.net.state_dict().items() if heads or k.startswith("backbone.")}

    reference = weights(first)
    for i, member in enumerate(members[1:], start=1):
        state = weights(member)
        why = None
        if set(state) != set(reference):
            extra, lacking = sorted(set(state) - set(reference)), sorted(set(reference) - set(state))
            why = f"a different architecture (tensors {extra[:3]} not in member 0, {lacking[:3]} missing)"
        else:
            shapes = [
                f"{k} {tuple(v.shape)} vs {tuple(reference[k].shape)}"
                for k, v in state.items()
                if v.shape != reference[k].shape
            ]
            if shapes:
                why = f"a different architecture ({'; '.join(shapes[:3])})"
            elif member.transform.key != first.transform.key:
                why = "a different input transform (image size, channels or normalisation)"
        if why is None and require_shared_init:
            if not first.source:
                why = f"member 0 {first.label} was trained from scratch, so members share no initialisation"
            elif member.source != first.source:
                why = f"another initialisation ({member.source or 'none'} vs member 0's {first.source})"
        if why is not None:
            raise FusionError(
                f"member {i} {member.label} cannot join a soup with member 0 {first.label}: it has {why}"
                + ("; set method.require_shared_init=false to average anyway" if "initialisation" in why else "")
            )


def greedy_soup(
    states: Sequence[dict[str, Tensor]], held_out: Sequence[float], evaluate: Callable[[dict[str, Tensor]], float]
) -> tuple[dict[str, Tensor], list[int], float]:
    """Greedy soup: members sorted by held-out accuracy, each added only if the soup's held-out accuracy
    strictly improves. Returns the soup, the chosen member indices and its held-out accuracy; never worse on
    held-out data than the best single member, which it starts from."""
    order = sorted(range(len(states)), key=lambda i: -held_out[i])
    chosen = [order[0]]
    soup, best = states[order[0]], held_out[order[0]]
    for i in order[1:]:
        candidate = average_state_dicts([states[j] for j in [*chosen, i]])
        score = evaluate(candidate)
        if score > best:
            chosen, soup, best = [*chosen, i], candidate, score
    return soup, chosen, best
