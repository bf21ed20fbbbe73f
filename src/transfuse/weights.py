"""Where initial weights come from (``init.weights``) and how they are put into a model.

Sources: ``none``; ``timm`` (hub weights for the backbone); a local ``.pth``/``.pt``/``.safetensors``/``.ckpt``
file; ``runs:/<run_id>[/<artifact>]`` (a checkpoint of an MLflow run, ``checkpoints/best.ckpt`` by default); or
an MLflow filter such as ``tags.stage = 'pretrain' and tags.data = 'mnist5k'``, which picks the newest
FINISHED run that matches.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from torch import Tensor, nn

from transfuse.errors import WeightsError

log = logging.getLogger(__name__)

DEFAULT_ARTIFACT = "checkpoints/best.ckpt"
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_FILTER_SYNTAX = re.compile(r"(=|<|>|\bLIKE\b|\bILIKE\b|\bIN\b)", re.IGNORECASE)
BACKBONE_PREFIX = "backbone.model."
HEAD_PREFIX = "head."
#: the class-dependent layer of every head (``LinearHead`` and ``MLPHead`` both end in ``fc``)
CLASSIFIER_PREFIX = "head.fc."


@dataclass
class Checkpoint:
    """Weights to start from, with what is known about where they came from."""

    state_dict: dict[str, Tensor]
    source: str
    class_names: list[str] | None = None
    run_id: str | None = None


@dataclass
class LoadReport:
    """What loading did: reported in the log and recorded on the run."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    head_reinitialised: bool = False


def read_file(path: str | Path) -> tuple[dict[str, Tensor], list[str] | None]:
    """Read a state dict (and saved class names, for transfuse checkpoints) from a weights file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read weights from {path}: {err}") from None
    if isinstance(obj, dict) and "state_dict" in obj:  # Lightning checkpoint
        class_names = obj.get("transfuse", {}).get("class_names")
        return obj["state_dict"], class_names
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, None
    raise WeightsError(f"{path} holds no state dict (expected a tensor dict or a Lightning checkpoint)")


def _run_checkpoint(client: MlflowClient, run_id: str, artifact: str) -> Checkpoint:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise WeightsError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from None
    with tempfile.TemporaryDirectory(prefix="transfuse-weights-") as directory:
        try:
            local = client.download_artifacts(run_id, artifact, directory)
        except (MlflowException, OSError):
            raise WeightsError(
                f"run {run_id} ({run.info.run_name}, {run.info.status}) has no artifact {artifact!r}; "
                "only runs that trained log checkpoints"
            ) from None
        state, class_names = read_file(local)
    return Checkpoint(state, f"runs:/{run_id}/{artifact}", class_names, run_id)


def find_run(client: MlflowClient, query: str) -> str:
    """Id of the newest FINISHED run in any experiment that matches an MLflow filter string."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    try:
        runs = client.search_runs(
            experiments,
            f"{query} and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except MlflowException as err:
        raise WeightsError(f"invalid run query {query!r}: {err.message}") from None
    if not runs:
        raise WeightsError(f"no FINISHED run matches {query!r} in {client.tracking_uri}")
    return runs[0].info.run_id


def resolve(spec: str | None, client: MlflowClient, backbone: nn.Module) -> Checkpoint | None:
    """Turn an ``init.weights`` value into weights keyed like the model (``backbone.model.*``, ``head.*``)."""
    spec = "none" if spec is None else str(spec).strip()
    if spec.lower() in ("none", "null", ""):
        return None
    if spec == "timm":
        try:
            hub_model = backbone.create(pretrained=True)
        except Exception as err:
            raise WeightsError(
                f"cannot fetch timm weights for {backbone.name!r} (offline or no pretrained weights?): {err}"
            ) from None
        return Checkpoint({BACKBONE_PREFIX + k: v for k, v in hub_model.state_dict().items()}, "timm")
    if spec.startswith("runs:/"):
        run_id, _, artifact = spec.removeprefix("runs:/").partition("/")
        return _run_checkpoint(client, run_id, artifact or DEFAULT_ARTIFACT)
    if spec.endswith(FILE_SUFFIXES) or Path(spec).expanduser().is_file():
        state, class_names = read_file(spec)
        return Checkpoint(state, str(Path(spec).expanduser().resolve()), class_names)
    if _FILTER_SYNTAX.search(spec):
        return _run_checkpoint(client, find_run(client, spec), DEFAULT_ARTIFACT)
    raise WeightsError(
        f"cannot read init.weights={spec!r}: expected none, timm, a weights file, runs:/<run_id> "
        "or an MLflow filter such as \"tags.stage = 'pretrain'\""
    )


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


def _as_model_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Plain timm state dicts (no ``backbone.``/``head.`` prefix) are taken as backbone weights."""
    if any(k.startswith(("backbone.", HEAD_PREFIX)) for k in state):
        return state
    return {BACKBONE_PREFIX + k: v for k, v in state.items()}


def load_into(
    model: nn.Module,
    checkpoint: Checkpoint,
    class_names: list[str],
    on_head_mismatch: str = "reinit",
    class_map: Mapping[str, str] | None = None,
    fresh_head: bool = False,
) -> LoadReport:
    """Copy checkpoint weights into ``model``; refuse shape mismatches outside a head whose classes changed.

    Args:
        model: a module with ``backbone`` and ``head`` children.
        checkpoint: weights from :func:`resolve`.
        class_names: the classes of the data the model will see.
        on_head_mismatch: ``reinit`` keeps the model's fresh classifier layer when the class sets differ
            (fine-tuning to new classes); ``error`` refuses (evaluation needs the head to match).
        class_map: ``{target class: source class}``; when the classifier is re-initialised, the rows of the
            mapped target classes are copied from the source classifier (a partial label-space match).
        fresh_head: keep the model's fresh classifier layer even when the classes match, as LP-FT and
            Kumar et al.'s fine-tuning baselines assume (a source head of the same classes starts warm).
    """
    if on_head_mismatch not in ("reinit", "error"):
        raise ValueError(f"on_head_mismatch must be 'reinit' or 'error', got {on_head_mismatch!r}")
    if fresh_head and on_head_mismatch == "error":
        raise WeightsError("init.fresh_head=true leaves an untrained classifier: only a stage that trains can use it")
    state = _as_model_keys(checkpoint.state_dict)
    own = model.state_dict()
    head_keys = [k for k in state if k.startswith(HEAD_PREFIX)]
    head_shapes_differ = any(k in own and own[k].shape != state[k].shape for k in head_keys)
    names_differ = checkpoint.class_names is not None and list(checkpoint.class_names) != list(class_names)
    reinit_head = bool(head_keys) and (head_shapes_differ or names_differ or fresh_head)
    if reinit_head and not (head_shapes_differ or names_differ):
        log.info("init.fresh_head: the classifier is re-initialised although the classes match")
        classifier = {k: v for k, v in state.items() if k.startswith(CLASSIFIER_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
    elif reinit_head:
        was = checkpoint.class_names or "a different number of classes"
        if on_head_mismatch == "error":
            raise WeightsError(
                f"checkpoint {checkpoint.source} was trained on classes {was}, but the data has "
                f"{class_names}; its head cannot be evaluated here"
            )
        log.warning("classes differ (checkpoint: %s, data: %s): the classifier is re-initialised", was, class_names)
        classifier = {k: v for k, v in state.items() if k.startswith(CLASSIFIER_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
    elif class_map:
        raise WeightsError("init.class_map is set, but source and target classes are the same; drop the map")
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise WeightsError(
            f"checkpoint {checkpoint.source} does not fit the model; shape mismatch in " + "; ".join(mismatched)
        )
    backbone_keys = [k for k in own if k.startswith("backbone.")]
    if backbone_keys and not any(k in state for k in backbone_keys):
        raise WeightsError(
            f"checkpoint {checkpoint.source} shares no backbone tensor with the model "
            f"(first expected key: {backbone_keys[0]}); was it trained with another backbone?"
        )
    rows = _mapped_rows(class_map or {}, checkpoint, class_names) if reinit_head else []
    result = model.load_state_dict(state, strict=False)
    if rows:
        own = model.state_dict()
        for key, tensor in classifier.items():
            for target_row, source_row in rows:
                own[key][target_row] = tensor[source_row]
        log.info("classifier rows copied for %d mapped classes", len(rows))
    missing = [k for k in result.missing_keys if not (reinit_head and k.startswith(CLASSIFIER_PREFIX))]
    if missing:
        log.warning("%d tensors not in the checkpoint keep their fresh values: %s", len(missing), missing[:20])
    if result.unexpected_keys:
        log.warning(
            "%d checkpoint tensors unused by the model: %s", len(result.unexpected_keys), result.unexpected_keys[:20]
        )
    loaded = len(state) - len(result.unexpected_keys)
    log.info("loaded %d tensors from %s", loaded, checkpoint.source)
    return LoadReport(loaded, missing, list(result.unexpected_keys), reinit_head)


def reset_above(model: nn.Module, fresh: Mapping[str, Tensor], copied_blocks: int) -> list[str]:
    """Put back the fresh values (``fresh``: the state before loading) of every backbone block after the first
    ``copied_blocks`` and of the head, buffers included: the source then gives only its first n blocks, as in
    Yosinski et al.'s transfer of the first n layers. Returns the keys reset."""
    from transfuse.finetune import backbone_blocks

    blocks = backbone_blocks(model)
    if not 0 <= copied_blocks <= len(blocks):
        raise WeightsError(
            f"init.copy_blocks={copied_blocks}, but the backbone has {len(blocks)} blocks (0 to copy none)"
        )
    keys = {k for k in fresh if k.startswith(HEAD_PREFIX)}
    for names, modules in blocks[copied_blocks:]:
        keys.update(names)
        keys.update(k for k in fresh if any(k.startswith(f"{m}.") for m in modules))
    state = model.state_dict()
    with torch.no_grad():
        for key in keys:
            state[key].copy_(fresh[key])
    log.info(
        "kept %d of %d blocks from the source; %d tensors above them start fresh", copied_blocks, len(blocks), len(keys)
    )
    return sorted(keys)


class _Branch(nn.Module):
    """Presents one branch of a multi-view backbone as a model's ``backbone`` so :func:`load_into` fits it."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.backbone = branch


def load_branches(model: nn.Module, client: MlflowClient, class_names: list[str]) -> dict[int, Checkpoint]:
    """Load each branch of a multi-view backbone from its ``branch_weights`` source (single-view runs' backbones);
    a branch without a source keeps its fresh weights. Returns the checkpoint loaded into each branch."""
    loaded = {}
    specs = getattr(model.backbone, "branch_weights", [])
    for i, (branch, spec) in enumerate(zip(model.backbone.branches, specs, strict=False)):
        checkpoint = resolve(spec, client, branch)
        if checkpoint is None:
            continue
        backbone_only = {k: v for k, v in _as_model_keys(checkpoint.state_dict).items() if k.startswith("backbone.")}
        load_into(_Branch(branch), Checkpoint(backbone_only, checkpoint.source, None, checkpoint.run_id), class_names)
        loaded[i] = checkpoint
    return loaded
