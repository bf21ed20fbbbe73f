"""Where initial weights come from (``init.weights``): a :class:`Checkpoint` keyed like the model, or None.

Sources: ``none``; ``timm`` (hub weights for the backbone); a local ``.pth``/``.pt``/``.safetensors``/``.ckpt``
file; ``runs:/<run_id>[/<artifact>]`` (a checkpoint of an MLflow run, ``checkpoints/best.ckpt`` by default); or
an MLflow filter such as ``tags.stage = 'pretrain' and tags.data = 'mnist5k'``, which picks the newest
FINISHED run that matches. An artifact path inside ``runs:/`` must stay inside that run's artifacts.
"""

from __future__ import annotations

import logging
import posixpath
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from torch import Tensor

from transfuse.config import is_none
from transfuse.errors import WeightsError
from transfuse.models.backbones import TimmBackbone
from transfuse.tracking.listing import newest_runs_hint
from transfuse.tracking.query import newest_finished

log = logging.getLogger(__name__)

DEFAULT_ARTIFACT = "checkpoints/best.ckpt"
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_FILTER_SYNTAX = re.compile(r"(=|<|>|\bLIKE\b|\bILIKE\b|\bIN\b)", re.IGNORECASE)
BACKBONE_PREFIX = "backbone.model."
HEAD_PREFIX = "head."


@dataclass
class Checkpoint:
    """Weights to start from, with what is known about where they came from."""

    state_dict: dict[str, Tensor]
    source: str
    class_names: list[str] | None = None
    run_id: str | None = None
    #: ``channel_pruned``: layers narrower than the model's own, which loading resizes to the saved shapes
    architecture: str | None = None


def read_file(path: str | Path, name: str | None = None) -> tuple[dict[str, Tensor], list[str] | None]:
    """Read a state dict (and saved class names, for transfuse checkpoints) from a weights file; errors call it
    ``name`` (e.g. the ``runs:/`` address of a downloaded artifact) when given."""
    state, class_names, _ = read_checkpoint(path, name)
    return state, class_names


def read_checkpoint(path: str | Path, name: str | None = None) -> tuple[dict[str, Tensor], list[str] | None, dict]:
    """:func:`read_file`, with the rest of a transfuse checkpoint's ``transfuse`` record (``architecture``)."""
    path = Path(path).expanduser()
    shown = name or str(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    unreadable = WeightsError(
        f"{shown} is not a readable weights file: expected a state dict or Lightning checkpoint saved with torch.save "
        "(.pth, .pt, .bin, .ckpt) or a .safetensors file"
    )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None, {}
        except (SafetensorError, OSError):
            raise unreadable from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises anything from EOFError to IndexError on bytes it cannot parse
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:  # a pickled object, e.g. torch.save(model): its classes are not loaded (that could run code)
            raise WeightsError(
                f"{shown} pickles {found.group(1)}, not only tensors; save model.state_dict() or a Lightning "
                "checkpoint instead (weights are read with torch.load(weights_only=True))"
            ) from None
        raise unreadable from None
    if isinstance(obj, dict) and "state_dict" in obj:  # Lightning checkpoint
        record = dict(obj.get("transfuse", {}))
        return obj["state_dict"], record.pop("class_names", None), record
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, None, {}
    raise WeightsError(f"{shown} holds no state dict (expected a tensor dict or a Lightning checkpoint)")


def _run_checkpoint(client: MlflowClient, run_id: str, artifact: str) -> Checkpoint:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise WeightsError(
            f"no MLflow run with id {run_id!r} in {client.tracking_uri}; {newest_runs_hint(client)}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="transfuse-weights-") as directory:
        try:
            local = client.download_artifacts(run_id, artifact, directory)
        except (MlflowException, OSError):
            raise WeightsError(
                f"run {run_id} ({run.info.run_name}, {run.info.status}) has no artifact {artifact!r}; "
                "only runs that trained log checkpoints"
            ) from None
        state, class_names, record = read_checkpoint(local, f"runs:/{run_id}/{artifact}")
    return Checkpoint(state, f"runs:/{run_id}/{artifact}", class_names, run_id, record.get("architecture"))


def find_run(client: MlflowClient, query: str) -> str:
    """Id of the newest FINISHED run in any experiment that matches an MLflow filter string."""
    run = newest_finished(client, query, error=WeightsError, what="run query")
    if run is None:
        raise WeightsError(f"no FINISHED run matches {query!r} in {client.tracking_uri}")
    return run.info.run_id


def artifact_path(spec: str) -> tuple[str, str]:
    """``runs:/<run_id>[/<artifact>]`` -> (run id, artifact path), refusing a path that leaves the run's artifacts.

    >>> artifact_path("runs:/abc/checkpoints/./last.ckpt")
    ('abc', 'checkpoints/last.ckpt')
    """
    run_id, _, artifact = spec.removeprefix("runs:/").partition("/")
    artifact = artifact or DEFAULT_ARTIFACT
    normal = posixpath.normpath(artifact)
    if not re.fullmatch(r"[0-9A-Za-z_-]+", run_id) or PurePosixPath(artifact).is_absolute() or normal.startswith(".."):
        raise WeightsError(f"{spec!r} is not runs:/<run id>/<artifact path inside that run>")
    return run_id, normal


def resolve(spec: str | None, client: MlflowClient, backbone: TimmBackbone) -> Checkpoint | None:
    """Turn an ``init.weights`` value into weights keyed like the model (``backbone.model.*``, ``head.*``).

    ``backbone`` is only asked for timm hub weights (``spec == "timm"``).
    """
    if is_none(spec):
        return None
    spec = str(spec).strip()
    if spec == "timm":
        try:
            hub_model = backbone.create(pretrained=True)
        except Exception as err:
            raise WeightsError(
                f"cannot fetch timm weights for {backbone.name!r} (offline or no pretrained weights?): {err}"
            ) from None
        return Checkpoint({BACKBONE_PREFIX + k: v for k, v in hub_model.state_dict().items()}, "timm")
    if spec.startswith("runs:/"):
        return _run_checkpoint(client, *artifact_path(spec))
    if spec.endswith(FILE_SUFFIXES) or Path(spec).expanduser().is_file():
        state, class_names, record = read_checkpoint(spec)
        return Checkpoint(state, str(Path(spec).expanduser().resolve()), class_names, None, record.get("architecture"))
    if _FILTER_SYNTAX.search(spec):
        return _run_checkpoint(client, find_run(client, spec), DEFAULT_ARTIFACT)
    raise WeightsError(
        f"cannot read init.weights={spec!r}: expected none, timm, a weights file, runs:/<run_id> "
        "or an MLflow filter such as \"tags.stage = 'pretrain'\""
    )


def as_model_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Plain timm state dicts (no ``backbone.``/``head.`` prefix) are taken as backbone weights."""
    if any(k.startswith(("backbone.", HEAD_PREFIX)) for k in state):
        return state
    return {BACKBONE_PREFIX + k: v for k, v in state.items()}
