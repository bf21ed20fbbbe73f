"""The one way a model gets its initial weights, shared by ``transfuse-train``, ``transfuse-fuse`` and members.

It runs before any MLflow run is created, so a wrong source (no such run, a file that does not fit) fails
without leaving a run behind, and it returns plain records that the caller logs on its run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient
from torch import nn

from transfuse.models.backbones import ViewBranches
from transfuse.weights.loading import LoadReport, apply, head_policy, load_backbone, reset_above
from transfuse.weights.sources import resolve


@dataclass(frozen=True)
class InitSpec:
    """The ``init`` node of a config: where weights come from and which of them to keep.

    Attributes:
        weights: ``init.weights`` syntax (none, timm, a file, ``runs:/<id>``, an MLflow filter).
        class_map: ``{target class: source class}`` rows copied into a fresh classifier.
        fresh_head: a fresh classifier even when the classes match.
        copy_blocks: copy only the first n backbone blocks (the rest and the head start fresh); None: all.
    """

    weights: str | None = None
    class_map: Mapping[str, str] = field(default_factory=dict)
    fresh_head: bool = False
    copy_blocks: int | None = None

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> InitSpec:
        return cls(
            weights=node.get("weights"),
            class_map=dict(node.get("class_map") or {}),
            fresh_head=bool(node.get("fresh_head", False)),
            copy_blocks=node.get("copy_blocks"),
        )


@dataclass(frozen=True)
class Initialised:
    """One source loaded: ``target`` is ``init`` for the whole model, ``init.branch.<i>`` for a branch."""

    target: str
    source: str
    run_id: str | None
    report: LoadReport

    def record(self) -> dict[str, Any]:
        """Plain values for :meth:`~transfuse.tracking.run.TrackedRun.log_source`."""
        return {
            "source": self.source,
            "source_run_id": self.run_id,
            "head_reinitialised": self.report.head_reinitialised,
            "missing": len(self.report.missing),
            "unexpected": len(self.report.unexpected),
            "prefix": self.target,
        }


def initialise(
    model: nn.Module,
    spec: InitSpec,
    client: MlflowClient,
    class_names: list[str],
    on_head_mismatch: str = "reinit",
    branches: bool = True,
) -> list[Initialised]:
    """Load ``spec`` into ``model`` (a ``backbone`` and a ``head``), then each multi-view branch's own source
    (``backbone.branch_weights``) unless ``branches`` is False (a trained member already holds its branches).

    Returns what was loaded, the whole model first; an empty list when everything starts fresh.
    """
    done = []
    checkpoint = resolve(spec.weights, client, model.backbone)
    if checkpoint is not None:
        fresh_head = spec.fresh_head or spec.copy_blocks is not None
        policy = head_policy(model, checkpoint, class_names, on_head_mismatch, spec.class_map, fresh_head)
        fresh = {k: v.clone() for k, v in model.state_dict().items()} if spec.copy_blocks is not None else {}
        report = apply(model, checkpoint, policy)
        if spec.copy_blocks is not None:
            reset_above(model, fresh, spec.copy_blocks)
        done.append(Initialised("init", checkpoint.source, checkpoint.run_id, report))
    if branches and isinstance(model.backbone, ViewBranches):
        for i, (branch, branch_spec) in enumerate(
            zip(model.backbone.branches, model.backbone.branch_weights, strict=False)
        ):
            branch_checkpoint = resolve(branch_spec, client, branch)
            if branch_checkpoint is not None:
                report = load_backbone(branch, branch_checkpoint)
                done.append(Initialised(f"init.branch.{i}", branch_checkpoint.source, branch_checkpoint.run_id, report))
    return done
