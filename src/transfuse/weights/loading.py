"""How a :class:`~transfuse.weights.sources.Checkpoint` goes into a model.

What happens to the classifier is decided once, from the classes and the options, as a :class:`HeadPolicy`;
:func:`apply` then copies tensors under that policy. The classifier is the head's own
:attr:`~transfuse.models.heads.Head.classifier` layer, found by identity, not by a naming convention.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from transfuse.errors import WeightsError
from transfuse.weights.sources import HEAD_PREFIX, Checkpoint, as_model_keys

log = logging.getLogger(__name__)

HEAD_MISMATCH = ("reinit", "error")
#: ``Checkpoint.architecture`` of a channel-pruned model: its layers are resized to the saved shapes on loading
CHANNEL_PRUNED = "channel_pruned"


@dataclass
class LoadReport:
    """What loading did: reported in the log and recorded on the run."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    head_reinitialised: bool = False


@dataclass(frozen=True)
class HeadPolicy:
    """What loading does with the classifier layer.

    Attributes:
        reinit: keep the model's fresh classifier instead of the checkpoint's.
        reason: why, for the log (empty when the checkpoint's classifier is kept).
        rows: (target row, source row) pairs copied from the checkpoint's classifier into the fresh one.
    """

    reinit: bool
    reason: str = ""
    rows: tuple[tuple[int, int], ...] = ()


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the model's classifier layer (``head.fc.`` for every head transfuse ships)."""
    classifier = model.head.classifier
    for name, module in model.named_modules():
        if module is classifier:
            return f"{name}."
    raise WeightsError(f"{type(model.head).__name__}.classifier is not a submodule of the model")


def head_policy(
    model: nn.Module,
    checkpoint: Checkpoint,
    class_names: list[str],
    on_head_mismatch: str = "reinit",
    class_map: Mapping[str, str] | None = None,
    fresh_head: bool = False,
) -> HeadPolicy:
    """Decide, once, whether the checkpoint's classifier is kept, refused or replaced by a fresh one.

    Args:
        model: the model the checkpoint goes into (a ``backbone`` and a ``head`` with a ``classifier``).
        checkpoint: weights from :func:`~transfuse.weights.sources.resolve`.
        class_names: the classes of the data the model will see.
        on_head_mismatch: ``reinit`` keeps a fresh classifier when the class sets differ (fine-tuning to new
            classes); ``error`` refuses (evaluation needs the head to match).
        class_map: ``{target class: source class}``; rows of mapped classes are copied into the fresh classifier.
        fresh_head: a fresh classifier even when the classes match (LP-FT and Kumar et al.'s baselines).
    """
    if on_head_mismatch not in HEAD_MISMATCH:
        raise WeightsError(f"stage.on_head_mismatch must be one of {HEAD_MISMATCH}, got {on_head_mismatch!r}")
    if fresh_head and on_head_mismatch == "error":
        raise WeightsError("init.fresh_head=true leaves an untrained classifier: only a stage that trains can use it")
    state, own = as_model_keys(checkpoint.state_dict), model.state_dict()
    head_keys = [k for k in state if k.startswith(HEAD_PREFIX)]
    # a channel-pruned head may take fewer features: only its rows, the classes, must match
    compared = slice(0, 1) if checkpoint.architecture == CHANNEL_PRUNED else slice(None)
    shapes_differ = any(k in own and own[k].shape[compared] != state[k].shape[compared] for k in head_keys)
    names_differ = checkpoint.class_names is not None and list(checkpoint.class_names) != list(class_names)
    if not head_keys or not (shapes_differ or names_differ or fresh_head):
        if class_map:
            raise WeightsError("init.class_map is set, but source and target classes are the same; drop the map")
        return HeadPolicy(reinit=False)
    if not (shapes_differ or names_differ):
        return HeadPolicy(True, "init.fresh_head: the classifier is re-initialised although the classes match")
    was = checkpoint.class_names or "a different number of classes"
    if on_head_mismatch == "error" and not names_differ and checkpoint.class_names is not None:
        key = next(k for k in head_keys if k in own and own[k].shape != state[k].shape)
        raise WeightsError(
            f"checkpoint {checkpoint.source} has the data's classes, but its classifier does not fit the model "
            f"({key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)})"
            + _pruned_hint(checkpoint, tuple(state[key].shape), tuple(own[key].shape), head=True)
        )
    if on_head_mismatch == "error":
        raise WeightsError(
            f"checkpoint {checkpoint.source} was trained on classes {_short(was)}, but the data has "
            f"{_short(class_names)}; its head cannot be evaluated here"
        )
    rows = _mapped_rows(class_map or {}, checkpoint, class_names)
    if names_differ or checkpoint.class_names is None:
        why = f"classes differ (checkpoint: {_short(was)}, data: {_short(class_names)})"
    else:  # same classes, another head shape: e.g. a test_resnet checkpoint for a resnet18 classifier
        why = "the classes match but the classifier's shape differs (another backbone or head?)"
    reason = f"{why}: the classifier is re-initialised"
    return HeadPolicy(True, reason, tuple(rows))


def _pruned_hint(checkpoint: Checkpoint, saved: tuple[int, ...], own: tuple[int, ...], head: bool = False) -> str:
    """What a shape mismatch may mean. Fewer output channels in a backbone layer, or fewer input features in the
    classifier, of a checkpoint without an architecture record looks like channel pruning whose record was lost
    (transfuse saves ``architecture: channel_pruned`` with a pruned model); anything else, another network."""
    dim = 1 if head else 0
    fewer = len(saved) > dim and len(own) == len(saved) and saved[dim] < own[dim] and saved[:dim] == own[:dim]
    if checkpoint.architecture is None and fewer:
        return "; is it channel-pruned without its architecture record (transfuse.architecture=channel_pruned)?"
    return "; was it trained with another backbone, input channels or head?"


def _short(names: object, most: int = 12) -> str:
    """A class list for a one-line message: the first ``most`` names and how many more."""
    if not isinstance(names, list | tuple) or len(names) <= most:
        return str(names)
    return f"{list(names[:most])} and {len(names) - most} more"


def _mapped_rows(class_map: Mapping[str, str], checkpoint: Checkpoint, class_names: list[str]) -> list[tuple[int, int]]:
    """(target row, source row) pairs of a class map, refusing names either side does not have."""
    if not class_map:
        return []
    if checkpoint.class_names is None:
        raise WeightsError(f"init.class_map needs class names, and {checkpoint.source} has none saved")
    unknown_target = sorted(set(class_map) - set(class_names))
    unknown_source = sorted(set(class_map.values()) - set(checkpoint.class_names))
    if unknown_target or unknown_source:
        raise WeightsError(
            f"init.class_map names unknown classes: target {unknown_target} (target has {class_names}), "
            f"source {unknown_source} (source has {checkpoint.class_names})"
        )
    return [(class_names.index(t), checkpoint.class_names.index(s)) for t, s in class_map.items()]


def _resized(module: nn.Module, weight: Tensor) -> nn.Module | None:
    """A fresh layer like ``module`` whose weight has ``weight``'s shape (None when it has it already)."""
    if module.weight.shape == weight.shape:
        return None
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        groups = weight.shape[0] if depthwise else module.groups
        return nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups,
            module.bias is not None,
            module.padding_mode,
        )
    if isinstance(module, nn.Linear):
        return nn.Linear(weight.shape[1], weight.shape[0], module.bias is not None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm):
        resized = copy.deepcopy(module)
        for key, value in list(resized.named_parameters(recurse=False)) + list(resized.named_buffers(recurse=False)):
            if value is not None and value.dim() == 1:
                setattr(resized, key, type(value)(torch.empty(weight.shape[0], dtype=value.dtype)))
        if hasattr(resized, "num_features"):
            resized.num_features = weight.shape[0]
        if isinstance(resized, nn.GroupNorm):
            resized.num_channels = weight.shape[0]
        if isinstance(resized, nn.LayerNorm):
            resized.normalized_shape = (weight.shape[0],)
        return resized
    raise WeightsError(f"cannot resize a {type(module).__name__} to the checkpoint's {tuple(weight.shape)}")


def resize_to(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Give every layer of ``model`` whose weight the checkpoint saved in another shape (a channel-pruned model)
    that shape: convolutions, linear and normalisation layers are rebuilt alike, fresh, ready for the weights.
    Returns the names of the layers resized."""
    resized = []
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or not isinstance(getattr(module, "weight", None), Tensor):
            continue
        new = _resized(module, weight)
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            resized.append(name)
    return resized


def apply(model: nn.Module, checkpoint: Checkpoint, policy: HeadPolicy) -> LoadReport:
    """Copy the checkpoint into ``model`` under ``policy``; refuse any shape mismatch it does not explain
    (a channel-pruned checkpoint first resizes the model's layers to its own)."""
    state = as_model_keys(checkpoint.state_dict)
    if checkpoint.architecture == CHANNEL_PRUNED:
        names = resize_to(model, state)
        log.info("%d layers resized to the channel-pruned checkpoint %s", len(names), checkpoint.source)
    own = model.state_dict()
    classifier: dict[str, Tensor] = {}
    if policy.reinit:
        prefix = classifier_prefix(model)
        if policy.reason.startswith("init."):
            log.info(policy.reason)
        else:
            log.warning(policy.reason)
        classifier = {k: v for k, v in state.items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:  # the first one only: a message of every mismatch once ran to thousands of characters
        first = mismatched[0]
        count = "1 shape mismatch:" if len(mismatched) == 1 else f"{len(mismatched)} shape mismatches, first"
        raise WeightsError(
            f"checkpoint {checkpoint.source} does not fit the model ({count} {first}: checkpoint "
            f"{tuple(state[first].shape)} vs model {tuple(own[first].shape)})"
            + _pruned_hint(checkpoint, tuple(state[first].shape), tuple(own[first].shape))
        )
    backbone_keys = [k for k in own if k.startswith("backbone.")]
    if backbone_keys and not any(k in state for k in backbone_keys):
        raise WeightsError(
            f"checkpoint {checkpoint.source} shares no backbone tensor with the model "
            f"(first expected key: {backbone_keys[0]}); was it trained with another backbone?"
        )
    result = model.load_state_dict(state, strict=False)
    if policy.rows:
        own = model.state_dict()
        with torch.no_grad():
            for key, tensor in classifier.items():
                for target_row, source_row in policy.rows:
                    own[key][target_row] = tensor[source_row]
        log.info("classifier rows copied for %d mapped classes", len(policy.rows))
    prefix = classifier_prefix(model) if policy.reinit else None
    missing = [k for k in result.missing_keys if not (prefix and k.startswith(prefix))]
    if missing:
        log.warning("%d tensors not in the checkpoint keep their fresh values: %s", len(missing), missing[:20])
    if result.unexpected_keys:
        log.warning(
            "%d checkpoint tensors unused by the model: %s", len(result.unexpected_keys), result.unexpected_keys[:20]
        )
    loaded = len(state) - len(result.unexpected_keys)
    log.info("loaded %d tensors from %s", loaded, checkpoint.source)
    return LoadReport(loaded, missing, list(result.unexpected_keys), policy.reinit)


def load_into(
    model: nn.Module,
    checkpoint: Checkpoint,
    class_names: list[str],
    on_head_mismatch: str = "reinit",
    class_map: Mapping[str, str] | None = None,
    fresh_head: bool = False,
) -> LoadReport:
    """:func:`head_policy` then :func:`apply`: load a checkpoint into a model with a ``backbone`` and a ``head``."""
    return apply(
        model, checkpoint, head_policy(model, checkpoint, class_names, on_head_mismatch, class_map, fresh_head)
    )


def reset_above(model: nn.Module, fresh: Mapping[str, Tensor], copied_blocks: int) -> list[str]:
    """Put back the fresh values (``fresh``: the state before loading) of every backbone block after the first
    ``copied_blocks`` and of the head, buffers included: the source then gives only its first n blocks, as in
    Yosinski et al.'s transfer of the first n layers. Returns the keys reset."""
    blocks = model.backbone_blocks()
    if not 0 <= copied_blocks <= len(blocks):
        raise WeightsError(
            f"init.copy_blocks={copied_blocks}, but the backbone has {len(blocks)} blocks (0 to copy none)"
        )
    keys = {k for k in fresh if k.startswith(HEAD_PREFIX)}
    for block in blocks[copied_blocks:]:
        keys.update(block.params)
        keys.update(k for k in fresh if any(k.startswith(f"{m}.") for m in block.modules))
    state = model.state_dict()
    with torch.no_grad():
        for key in keys:
            state[key].copy_(fresh[key])
    log.info(
        "kept %d of %d blocks from the source; %d tensors above them start fresh", copied_blocks, len(blocks), len(keys)
    )
    return sorted(keys)


def load_backbone(backbone: nn.Module, checkpoint: Checkpoint) -> LoadReport:
    """Load only the backbone tensors of ``checkpoint`` into a bare backbone (one branch of a multi-view model)."""
    state = {
        k.removeprefix("backbone."): v
        for k, v in as_model_keys(checkpoint.state_dict).items()
        if k.startswith("backbone.")
    }
    own = backbone.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched or not any(k in state for k in own):
        raise WeightsError(
            f"checkpoint {checkpoint.source} does not fit this branch "
            f"({len(mismatched)} shape mismatches, {sum(k in state for k in own)} shared tensors)"
        )
    result = backbone.load_state_dict(state, strict=False)
    return LoadReport(len(state) - len(result.unexpected_keys), list(result.missing_keys), list(result.unexpected_keys))
