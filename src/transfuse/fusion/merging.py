"""Weight-space merging beyond the plain average: task arithmetic, TIES and Fisher merging, and BatchNorm
statistics re-estimated after any of them (pure functions over state dicts; :mod:`.methods` wires them).

Task arithmetic and TIES work on *task vectors*, each member's weights minus the shared source (pretrained)
weights, so they need the source; Fisher merging weighs each member's weights by how much its own predictions
depend on them. Tensors the source lacks (a classifier re-initialised for new classes) have no task vector:
they are averaged like a soup, as are integer buffers (taken from the first member, as in
:func:`~transfuse.fusion.soups.average_state_dicts`).

Averaged weights do not come with the running statistics of their BatchNorm layers: the mean of each member's
running mean is not the mean of the averaged network's activations. :func:`reset_bn` re-estimates them from
images, as :func:`torch.optim.swa_utils.update_bn` does for stochastic weight averaging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from transfuse.errors import FusionError
from transfuse.fusion.soups import average_state_dicts


def _merged_keys(source: Mapping[str, Tensor], states: Sequence[Mapping[str, Tensor]]) -> list[str]:
    """Keys a task vector exists for: floating-point tensors of the source every member has, of the same shape."""
    if not states:
        raise FusionError("merging needs at least one member")
    first = states[0]
    return [k for k, v in source.items() if k in first and first[k].is_floating_point() and first[k].shape == v.shape]


def task_vectors(source: Mapping[str, Tensor], states: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Each member's weights minus the source's, over the tensors both have (Ilharco et al. 2023).

    >>> task_vectors({"w": torch.tensor([1.0])}, [{"w": torch.tensor([3.0])}])
    [{'w': tensor([2.])}]
    """
    keys = _merged_keys(source, states)
    return [{k: state[k].float() - source[k].float() for k in keys} for state in states]


def _apply(
    source: Mapping[str, Tensor], states: Sequence[Mapping[str, Tensor]], vector: Mapping[str, Tensor], scale: float
) -> dict[str, Tensor]:
    """``source + scale * vector`` where there is a vector; the members' average everywhere else."""
    merged = average_state_dicts(states)
    for key, delta in vector.items():
        merged[key] = (source[key].float() + scale * delta).to(states[0][key].dtype)
    return merged


def task_arithmetic(
    source: Mapping[str, Tensor], states: Sequence[Mapping[str, Tensor]], scale: float
) -> dict[str, Tensor]:
    """Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic"): the source plus ``scale``
    times the *sum* of the members' task vectors. With ``M`` members, ``scale = 1/M`` is the uniform soup.

    >>> source, a, b = {"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}
    >>> task_arithmetic(source, [a, b], 0.5)["w"]  # 1 + 0.5 * (1 + 3)
    tensor([3.])
    """
    vectors = task_vectors(source, states)
    summed = {k: torch.stack([v[k] for v in vectors]).sum(dim=0) for k in vectors[0]}
    return _apply(source, states, summed, scale)


def ties_vector(vectors: Sequence[Mapping[str, Tensor]], density: float) -> dict[str, Tensor]:
    """TIES-merging's merged task vector (Yadav et al. 2023): trim, elect sign, disjoint mean.

    1. Trim: keep each task vector's ``density`` fraction of entries of largest magnitude, over the whole
       vector (all its tensors together, as the paper's code flattens them); zero the rest.
    2. Elect: each entry's sign is that of the sum of the trimmed values (the sign with more mass).
    3. Disjoint mean: each entry is the mean of the trimmed values that are non-zero and of the elected sign;
       zero where none is.
    """
    if not 0.0 < density <= 1.0:
        raise FusionError(f"ties density must be in (0, 1], got {density}")
    keys = list(vectors[0])
    flat = torch.stack([torch.cat([v[k].flatten() for k in keys]) for v in vectors])  # [M, P]
    keep = max(1, round(density * flat.shape[1]))
    top = flat.abs().topk(keep, dim=1).indices
    trimmed = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top))
    elected = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    merged = (trimmed * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    out, start = {}, 0
    for k in keys:
        n = vectors[0][k].numel()
        out[k] = merged[start : start + n].view_as(vectors[0][k])
        start += n
    return out


def ties(
    source: Mapping[str, Tensor], states: Sequence[Mapping[str, Tensor]], scale: float, density: float = 0.2
) -> dict[str, Tensor]:
    """TIES-merging: the source plus ``scale`` times :func:`ties_vector` of the members' task vectors."""
    return _apply(source, states, ties_vector(task_vectors(source, states), density), scale)


def fisher_merge(
    states: Sequence[Mapping[str, Tensor]], fishers: Sequence[Mapping[str, Tensor]], floor: float = 1e-8
) -> dict[str, Tensor]:
    """Fisher merging (Matena & Raffel 2022): each entry the members' values weighted by their diagonal Fisher
    information, ``sum_i F_i theta_i / sum_i F_i``. ``floor`` is added to every Fisher, so entries no member's
    predictions depend on fall back to the plain mean; tensors without a Fisher (buffers) are averaged, and a
    Fisher of a tensor the states lack (a multi-task merge leaves each task's head out) is not used.

    >>> fisher_merge([{"w": torch.tensor([0.0])}, {"w": torch.tensor([4.0])}],
    ...              [{"w": torch.tensor([3.0])}, {"w": torch.tensor([1.0])}])["w"]
    tensor([1.])
    """
    merged = average_state_dicts(states)
    for key in (k for k in fishers[0] if k in merged):  # a Fisher of what is not merged (a task's head) is unused
        weights = torch.stack([f[key].float() + floor for f in fishers])
        values = torch.stack([s[key].float() for s in states])
        merged[key] = ((weights * values).sum(dim=0) / weights.sum(dim=0)).to(states[0][key].dtype)
    return merged


def diagonal_fisher(
    net: nn.Module, batches: Iterable[Tensor], labels: Iterable[Tensor] | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """The diagonal Fisher information of ``net``'s parameters: the mean over images of the squared gradient of
    the log-likelihood of one label per image.

    By default the label is drawn from the network's own predictive distribution (the true Fisher, as Matena &
    Raffel estimate it: no labels needed); with ``labels`` it is the given one (the "empirical" Fisher). Images
    are taken one at a time: a batch's gradient would square the sum, not sum the squares. The network runs in
    eval mode (BatchNorm on its running statistics).
    """
    params = {k: p for k, p in net.named_parameters()}
    fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    was_training, count = net.training, 0
    net.eval()
    given = iter(labels) if labels is not None else None
    for batch in batches:
        batch_labels = next(given) if given is not None else None
        for i in range(len(batch)):
            net.zero_grad(set_to_none=True)
            log_probs = torch.log_softmax(net(batch[i : i + 1]).float(), dim=-1)[0]
            if batch_labels is None:
                y = torch.multinomial(log_probs.detach().exp().cpu(), 1, generator=generator).item()
            else:
                y = int(batch_labels[i])
            log_probs[y].backward()
            for k, p in params.items():
                if p.grad is not None:
                    fisher[k] += p.grad.detach().float() ** 2
            count += 1
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    if count == 0:
        raise FusionError("the Fisher information needs at least one image")
    return {k: v / count for k, v in fisher.items()}


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in net.modules())


@torch.no_grad()
def reset_bn(net: nn.Module, batches: Iterable[Tensor], prepare: Callable[[Tensor], Tensor] | None = None) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance from ``batches`` (their exact average over
    the batches, as :func:`torch.optim.swa_utils.update_bn`), leaving every other tensor as it was; ``prepare``
    turns a batch into the network's input (the member's transform). A network without BatchNorm is returned as
    it is. The network comes back in the mode it was in."""
    layers = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        return net
    momenta = {m: m.momentum for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every image weighs the same
    was_training = net.training
    net.eval()
    for m in layers:  # only BatchNorm in training mode: dropout and the rest stay deterministic
        m.train()
    device = next(net.parameters()).device
    for batch in batches:
        net(prepare(batch.to(device)) if prepare is not None else batch.to(device))
    for m, momentum in momenta.items():
        m.momentum = momentum
    net.train(was_training)
    return net
