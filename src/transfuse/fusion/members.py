"""Trained runs as fusion members: found in MLflow, rebuilt from their logged config, loaded from a checkpoint.

A member keeps its own input transform (image size, channels, normalisation of its backbone), so one raw
uint8 batch from the fusion's datamodule can feed members built on different backbones.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from transfuse.data.transforms import BatchTransform
from transfuse.errors import FusionError
from transfuse.tracking.query import SOURCE_TAG, experiment_ids, finished_runs
from transfuse.weights import InitSpec, initialise


class Classifier(nn.Module):
    """Backbone then head, keyed like :class:`~transfuse.models.ImageClassifier` (``backbone.*``, ``head.*``)
    so its state dict loads into a training run with ``init.weights``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


@dataclass
class Member:
    """One trained run, ready to predict."""

    run: Run
    config: DictConfig
    net: Classifier
    transform: BatchTransform
    source: str  # the weights it was initialised from (``init.source`` tag), or "" when trained from scratch

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def label(self) -> str:
        return f"{self.run.info.run_name} ({self.run_id[:8]})"

    @torch.no_grad()
    def features(self, raw: Tensor, batch_size: int = 256) -> Tensor:
        """Pooled backbone features ``[N, D]`` of raw uint8 images."""
        self.net.eval()
        device = next(self.net.parameters()).device
        out = [
            self.net.backbone(self.transform(raw[i : i + batch_size].to(device), train=False)).float().cpu()
            for i in range(0, len(raw), batch_size)
        ]
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, raw: Tensor, batch_size: int = 256) -> Tensor:
        """Logits ``[N, C]`` of raw uint8 images, through this member's own transform."""
        self.net.eval()
        device = next(self.net.parameters()).device
        out = [
            self.net(self.transform(raw[i : i + batch_size].to(device), train=False)).float().cpu()
            for i in range(0, len(raw), batch_size)
        ]
        return torch.cat(out)


def find_members(
    client: MlflowClient, run_ids: Sequence[str] = (), query: str | None = None, experiments: Sequence[str] = ()
) -> list[Run]:
    """The member runs: ``run_ids`` in the given order, or the FINISHED runs matching an MLflow filter
    (oldest first). Exactly one of the two must be given; every member must have FINISHED."""
    run_ids = list(dict.fromkeys(str(r) for r in run_ids or ()))
    query = (query or "").strip() or None  # a blank filter would match every FINISHED run
    if not run_ids and not query:
        raise FusionError('no members: give pool.runs=[<run id>,...] or pool.filter="<MLflow filter>"')
    if run_ids and query:
        raise FusionError('give the members as pool.runs=[<run id>,...] or pool.filter="<MLflow filter>", not both')
    if query:
        ids = experiment_ids(client, experiments, error=FusionError)
        order = ["attributes.start_time ASC"]
        runs = finished_runs(client, ids, query, order, max_results=1000, error=FusionError, what="pool.filter")
        if not runs:
            raise FusionError(f"no FINISHED run matches pool.filter {query!r} in {client.tracking_uri}")
        return runs
    runs = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise FusionError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from None
        if run.info.status != "FINISHED":
            raise FusionError(
                f"run {run_id} ({run.info.run_name}) is {run.info.status}; only FINISHED runs can be fused"
            )
        runs.append(run)
    return runs


def _run_config(client: MlflowClient, run: Run) -> DictConfig:
    with tempfile.TemporaryDirectory(prefix="transfuse-member-") as directory:
        try:
            path = client.download_artifacts(run.info.run_id, "config.yaml", directory)
        except (MlflowException, OSError):
            raise FusionError(
                f"run {run.info.run_id} ({run.info.run_name}) has no config.yaml; "
                "members must come from transfuse-train"
            ) from None
        return OmegaConf.load(Path(path))


#: where transfuse's backbones and heads lived before; member runs logged then still name these paths
LEGACY_MODULES = ("transfuse.models.multiview.", "transfuse.models.backbone.", "transfuse.models.heads.")


def _allowed_targets() -> dict[str, str]:
    """``_target_`` values a member's backbone and head may name -> the class path to build: transfuse's own
    backbones and heads only, under their public, module and legacy paths."""
    from transfuse.models import EarlyFusion, TimmBackbone, ViewBranches, heads

    classes = [TimmBackbone, EarlyFusion, ViewBranches]
    classes += [
        c for c in vars(heads).values() if isinstance(c, type) and issubclass(c, heads.Head) and c is not heads.Head
    ]
    allowed = {}
    for c in classes:
        public = f"transfuse.models.{c.__name__}"
        for prefix in (f"{c.__module__}.", "transfuse.models.", *LEGACY_MODULES):
            allowed[prefix + c.__name__] = public
    return allowed


def check_targets(node: object, run: Run, where: str) -> None:
    """Refuse a config read back from a store unless every ``_target_`` in it is one of transfuse's backbones or
    heads: a store is shared, and ``instantiate`` would otherwise call whatever it names (``torch.load``...)."""
    allowed = _allowed_targets()
    stack: list[tuple[str, object]] = [(where, node)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict | DictConfig):
            for key, child in value.items():
                if key == "_target_" and child not in allowed:
                    raise FusionError(
                        f"run {run.info.run_id} ({run.info.run_name}): {path}._target_={child!r} is not a transfuse "
                        "backbone or head; configs read from a store are only built from transfuse's own classes"
                    )
                if key == "_target_":
                    value[key] = allowed[child]  # a legacy path becomes today's
                stack.append((f"{path}.{key}", child))
        elif isinstance(value, list | ListConfig):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(value))


def load_member(client: MlflowClient, run: Run, class_names: list[str]) -> Member:
    """Rebuild a run's backbone and head from its logged config and load its best checkpoint.

    Only ``backbone.*`` and ``head.*`` tensors are used (an adaptation run's discriminator is not part of the
    classifier), and the branches of a multi-view member are not re-initialised from their own sources. A
    member trained on other classes than the fusion's data is refused.
    """
    config = _run_config(client, run)
    if "backbone" not in config or "head" not in config or "data" not in config:
        raise FusionError(f"run {run.info.run_id} ({run.info.run_name}) is not a classifier training run")
    check_targets(config.backbone, run, "backbone")
    check_targets(config.head, run, "head")
    backbone = instantiate(config.backbone)
    head = instantiate(config.head, in_features=backbone.num_features, num_classes=len(class_names))
    net = Classifier(backbone, head)
    spec = InitSpec(weights=f"runs:/{run.info.run_id}")
    initialise(net, spec, client, class_names, on_head_mismatch="error", branches=False)
    data = config.data
    transform = BatchTransform(data.image_size, data.channels, list(data.mean), list(data.std))
    return Member(run, config, net.eval(), transform, run.data.tags.get(SOURCE_TAG, ""))


def load_source(client: MlflowClient, members: Sequence[Member], class_names: list[str]) -> dict[str, Tensor]:
    """The weights every member was fine-tuned from (their ``init.source`` tag), keyed like a member's network:
    what task vectors are measured from. Members of no source, or of different ones, are refused by name. A source
    classifier of other classes than the fusion's is left out (the members' heads then have no task vector)."""
    import copy

    from transfuse.weights.loading import classifier_prefix, head_policy
    from transfuse.weights.sources import as_model_keys, resolve

    first = members[0]
    for i, member in enumerate(members):
        if not member.source:
            raise FusionError(
                f"member {i} {member.label} was trained from scratch: merging task vectors needs members "
                "fine-tuned from one source"
            )
        if member.source != first.source:
            raise FusionError(
                f"member {i} {member.label} was fine-tuned from {member.source}, member 0 {first.label} from "
                f"{first.source}: task vectors need one shared source"
            )
    net = copy.deepcopy(first.net)
    checkpoint = resolve(first.source, client, net.backbone)
    own = net.state_dict()
    state = as_model_keys(checkpoint.state_dict)
    dropped = classifier_prefix(net) if head_policy(net, checkpoint, class_names, "reinit").reinit else None
    return {
        k: v
        for k, v in state.items()
        if k in own and own[k].shape == v.shape and not (dropped and k.startswith(dropped))
    }
