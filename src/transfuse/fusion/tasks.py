"""Multi-task merging: one member per task, each fine-tuned from one shared source on its own dataset, merged
into one backbone that keeps every task's own head (the setting of task arithmetic, TIES and FusionBench).

A member belongs to the task whose dataset it trained on: the content digest of the task's data, built here
from its preset, equals the digest of the member run's ``train`` dataset input. So a task must be built as
the member's run built it (same preset, overrides and seed), and a member trained on other data is refused
rather than scored on images it may have trained on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Run
from torch import Tensor, nn

from transfuse.errors import FusionError
from transfuse.fusion.fused import Fused
from transfuse.fusion.members import Classifier, Member
from transfuse.fusion.pool import batches, fisher_batches


@dataclass
class Task:
    """One task: its name, its data's raw images and labels per split, its classes and its member (whose head
    the merged backbone uses), with the member's own logits on the held-out splits."""

    name: str
    member: Member
    images: dict[str, Tensor]
    labels: dict[str, Tensor]
    class_names: list[str]
    logits: dict[str, Tensor]

    def accuracy(self, logits: Tensor, split: str) -> float:
        return float((logits.argmax(-1) == self.labels[split]).float().mean())


@dataclass
class TaskModel:
    """A merged model: one backbone shared by every task, each task's member with that backbone and its own
    head (``members[t]`` predicts task ``t``)."""

    backbone: nn.Module
    members: list[Member]


@dataclass
class TaskPool:
    """The tasks of a multi-task merge and the members' shared source weights (for task vectors). Speaks the
    :class:`~transfuse.fusion.pool.Pool` protocol of the weight-space methods: a merged state's backbone is
    scored with each task's head on that task, and a score is the mean over tasks (FusionBench's average)."""

    tasks: list[Task]
    source: dict[str, Tensor] | None = None

    merges_heads = False
    #: the held-out splits every task is scored on
    splits = ("val", "test")

    @property
    def members(self) -> list[Member]:
        return [t.member for t in self.tasks]

    def states(self) -> list[dict[str, Tensor]]:
        """What a weight-space method merges: every member's backbone (the heads stay each task's own)."""
        return [{k: v for k, v in m.net.state_dict().items() if k.startswith("backbone.")} for m in self.members]

    def soup(self, state: dict[str, Tensor], reset_bn: bool) -> TaskModel:
        """Member 0's backbone holding the ``backbone.*`` tensors of ``state``, with every task's own head; with
        ``reset_bn``, its BatchNorm statistics re-estimated on all tasks' training images, each task's through
        its member's transform (one backbone serves all tasks, so one set of statistics does)."""
        from transfuse.fusion.merging import reset_bn as re_estimate

        backbone = copy.deepcopy(self.tasks[0].member.net.backbone)
        own = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        backbone.load_state_dict(own)
        members = []
        for task in self.tasks:
            member = copy.copy(task.member)
            member.net = Classifier(backbone, task.member.net.head)  # the head is shared, never changed
            members.append(member)
        if reset_bn:
            inputs = [
                m.transform(b, train=False)
                for t, m in zip(self.tasks, members, strict=True)
                for b in batches(t.images["train"])
            ]
            re_estimate(backbone, inputs)
        backbone.eval()
        return TaskModel(backbone, members)

    def task_logits(self, model: TaskModel, split: str) -> list[Tensor]:
        return [m.predict(t.images[split]) for t, m in zip(self.tasks, model.members, strict=True)]

    def score(self, model: TaskModel, split: str = "val") -> float:
        """The mean over tasks of each task's accuracy with its own head on the merged backbone."""
        accuracies = [t.accuracy(lg, split) for t, lg in zip(self.tasks, self.task_logits(model, split), strict=True)]
        return sum(accuracies) / len(accuracies)

    def member_accuracy(self, split: str) -> list[float]:
        """Each member's backbone used for every task (with its own BatchNorm statistics), as :meth:`score`."""
        return [self.score(self.soup(m.net.state_dict(), reset_bn=False), split) for m in self.members]

    def fused(self, model: TaskModel, used: list[int], weights: dict[str, float]) -> Fused:
        """The merged model as a fusion's result: logits keyed ``<task>/<split>``, task 0's prediction path to
        time, the backbone and every head as its cost, and each task's network to save."""
        logits = {}
        for split in self.splits:
            for task, task_logits in zip(self.tasks, self.task_logits(model, split), strict=True):
                logits[f"{task.name}/{split}"] = task_logits
        modules = [model.backbone, *(m.net.head for m in model.members)]
        states = {t.name: m.net.state_dict() for t, m in zip(self.tasks, model.members, strict=True)}
        return Fused(logits, model.members[0].predict, modules, used, weights, task_states=states)

    def individual(self) -> Fused:
        """No merging: every task with its own member (the upper reference); its cost is every member's."""
        logits = {f"{t.name}/{split}": t.logits[split] for split in self.splits for t in self.tasks}
        used = list(range(len(self.tasks)))
        return Fused(logits, self.tasks[0].member.predict, [m.net for m in self.members], used)

    def fisher_inputs(self, i: int, count: int, true_labels: bool) -> tuple[list[Tensor], list[Tensor] | None]:
        """Member ``i``'s inputs for its Fisher information: the first ``count`` training images of its own task."""
        task = self.tasks[i]
        return fisher_batches(task.member, task.images["train"][:count], task.labels["train"][:count], true_labels)

    @classmethod
    def predict(
        cls, names: Sequence[str], members: Sequence[Member], datamodules: Sequence, source: dict | None = None
    ) -> TaskPool:
        """Each task with its member's own logits on the held-out splits, computed once for every method."""
        tasks = []
        for name, member, dm in zip(names, members, datamodules, strict=True):
            splits = dm.splits
            images, labels = {s: splits[s].images for s in splits}, {s: splits[s].labels for s in splits}
            logits = {split: member.predict(images[split]) for split in cls.splits}
            tasks.append(Task(name, member, images, labels, list(dm.class_names), logits))
        return cls(tasks, source)


def trained_digests(run: Run) -> list[str]:
    """Digests of the datasets a run trained on (its ``train`` dataset inputs; a run from ``search_runs`` comes
    without its inputs: read it with ``get_run``)."""
    from transfuse.tracking.datasets import CONTEXT_TAG

    inputs = run.inputs.dataset_inputs if run.inputs is not None else []
    return [i.dataset.digest for i in inputs if {t.key: t.value for t in i.tags}.get(CONTEXT_TAG) == "train"]


def match_members(
    names: Sequence[str], digests: Sequence[str], runs: Sequence[Run], client: MlflowClient | None = None
) -> list[Run]:
    """The member run of each task, in task order: the one run whose training data has the task's digest.

    A task without a member, a task with several, and a member that belongs to no task are refused by name.
    With ``client``, each run's inputs are read from the store (search results lack them).
    """
    if client is not None:
        runs = [client.get_run(r.info.run_id) for r in runs]
    trained = {r.info.run_id: trained_digests(r) for r in runs}

    def label(run: Run) -> str:
        seen = ", ".join(trained[run.info.run_id]) or "no dataset logged"
        return f"{run.info.run_name} ({run.info.run_id[:8]}, trained on {seen})"

    matched = []
    for name, digest in zip(names, digests, strict=True):
        owners = [r for r in runs if digest in trained[r.info.run_id]]
        if not owners:
            raise FusionError(
                f"task {name} (data digest {digest}) has no member: no member trained on exactly this data; members: "
                f"{'; '.join(label(r) for r in runs)}. Build the task as its member's run did (same preset, "
                "overrides and seed)"
            )
        if len(owners) > 1:
            raise FusionError(
                f"task {name} (data digest {digest}) has {len(owners)} members ({'; '.join(label(r) for r in owners)});"
                " multi-task merging takes one member per task: narrow pool.filter or list pool.runs"
            )
        matched.append(owners[0])
    chosen = {r.info.run_id for r in matched}
    spare = [r for r in runs if r.info.run_id not in chosen]
    if spare:
        raise FusionError(
            f"member {label(spare[0])} belongs to none of the tasks {list(names)}: add its task to tasks= or leave "
            "it out of the pool"
        )
    return matched
