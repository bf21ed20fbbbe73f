"""The ``fusion_method=`` options of ``transfuse-fuse``: each turns a pool of members into one fused model.

A method's ``fuse(pool, students)`` gets a :class:`~transfuse.fusion.pool.Pool` (members, data, the members'
logits) and, for the methods that train a model, :class:`~transfuse.fusion.students.Students`; it returns a
:class:`Fused`: its logits per split, a ``predict`` function from raw images (used to time it), its parameter
modules (what it holds, for its cost), any fusion weights, and for soups and students the weights to save. Scoring is
:mod:`transfuse.fusion.evaluate`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from transfuse.errors import ConfigError, FusionError
from transfuse.fusion import combine, merging
from transfuse.fusion.fused import Fused
from transfuse.fusion.members import Member
from transfuse.fusion.pool import Pool
from transfuse.fusion.soups import average_state_dicts, check_soup_members, greedy_soup
from transfuse.fusion.students import Students


class FusionMethod:
    """Base of every method: ``fuse(pool, students)`` returns a :class:`Fused`.

    ``trains_student`` tells the entry point to check, before any run opens, that the config's student builds;
    ``needs_source`` to load the members' source weights, also before any run opens.
    """

    trains_student: ClassVar[bool] = False
    #: the entry point loads the members' shared source weights into ``pool.source`` (task vectors need them)
    needs_source: ClassVar[bool] = False
    #: whether the method can merge members of different tasks (``tasks=``: one backbone, each task's own head)
    multi_task: ClassVar[bool] = False

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        raise NotImplementedError

    def check(self, pool: Pool) -> None:
        """Refuse a pool this method cannot fuse; called before any run opens, so a bad pool leaves no run."""


def _nets(members: list[Member], used: list[int]) -> list[nn.Module]:
    return [members[i].net for i in used]


class BestMember(FusionMethod):
    """No fusion: the single member with the best validation accuracy (the baseline every fusion must beat)."""

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        accuracy = pool.member_accuracy("val")
        best = max(range(len(pool.members)), key=lambda i: accuracy[i])
        member = pool.members[best]
        weights = {f"weight/{i}": float(i == best) for i in range(len(pool.members))}
        logits = {split: member_logits[best] for split, member_logits in pool.logits.items()}
        return Fused(logits, member.predict, _nets(pool.members, [best]), [best], weights)


class Individual(FusionMethod):
    """No fusion, one model per task: every task scored with its own member (multi-task merging's reference row,
    at the cost of all the members together)."""

    multi_task: ClassVar[bool] = True

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        individual = getattr(pool, "individual", None)
        if individual is None:
            raise FusionError("fusion_method=individual scores each task's own member: give the tasks with tasks=")
        return individual()


class DecisionRule(FusionMethod):
    """Combine every member's logits with a fixed rule (``logit_mean``, ``prob_mean``, ``vote``)."""

    rule: Callable[[Tensor], Tensor] = staticmethod(combine.logit_mean)

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        members, used = pool.members, list(range(len(pool.members)))
        return Fused(
            {split: self.rule(logits) for split, logits in pool.logits.items()},
            lambda raw: self.rule(torch.stack([m.predict(raw) for m in members])),
            _nets(members, used),
            used,
        )


class LogitMean(DecisionRule):
    rule = staticmethod(combine.logit_mean)


class ProbMean(DecisionRule):
    rule = staticmethod(combine.prob_mean)


class Vote(DecisionRule):
    rule = staticmethod(combine.vote)


class Weighted(FusionMethod):
    """Weighted probability average, the weights fitted on the validation split (negative log-likelihood)."""

    def __init__(self, steps: int = 300, lr: float = 0.1) -> None:
        self.steps, self.lr = steps, lr

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        w = combine.fit_weights(pool.logits["val"], pool.labels["val"], self.steps, self.lr)
        members, used = pool.members, list(range(len(pool.members)))
        return Fused(
            {split: combine.weighted(logits, w) for split, logits in pool.logits.items()},
            lambda raw: combine.weighted(torch.stack([m.predict(raw) for m in members]), w),
            _nets(members, used),
            used,
            {f"weight/{i}": float(v) for i, v in enumerate(w)},
        )


class Stacking(FusionMethod):
    """A logistic-regression meta-learner on the members' validation log-probabilities."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C, self.max_iter = C, max_iter

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        stacker = combine.Stacker(self.C, self.max_iter).fit(pool.logits["val"], pool.labels["val"])
        members, used = pool.members, list(range(len(pool.members)))
        coef = torch.as_tensor(stacker.model.coef_).abs()  # [C, M * C]: how much each member is listened to
        share = coef.view(coef.shape[0], len(members), -1).sum(dim=(0, 2))
        return Fused(
            {split: stacker(logits) for split, logits in pool.logits.items()},
            lambda raw: stacker(torch.stack([m.predict(raw) for m in members])),
            _nets(members, used),
            used,
            {f"weight/{i}": float(v) for i, v in enumerate(share / share.sum())},
        )


class _Soup(FusionMethod):
    """A method whose result is one network of the members' architecture, made from their weights (one backbone
    with every task's own head, for a multi-task pool): it works through the pool's ``soup``, ``score`` and
    ``fused``, so the same merge serves one dataset and several tasks.

    Args:
        require_shared_init: refuse members that were not fine-tuned from one source (see
            :func:`~transfuse.fusion.soups.check_soup_members`).
        reset_bn: after weights are averaged, re-estimate the BatchNorm running statistics on the fusion data's
            training images (:func:`~transfuse.fusion.merging.reset_bn`); a no-op for networks without BatchNorm.
    """

    multi_task: ClassVar[bool] = True

    def __init__(self, require_shared_init: bool = True, reset_bn: bool = True) -> None:
        self.require_shared_init, self.reset_bn = require_shared_init, reset_bn

    def _check(self, pool: Pool, require_shared_init: bool) -> None:
        check_soup_members(pool.members, require_shared_init, heads=pool.merges_heads)

    def check(self, pool: Pool) -> None:
        self._check(pool, self.require_shared_init)

    def _model(self, pool: Pool, state: dict[str, Tensor], averaged: bool = True) -> Member:
        """The pool's network holding ``state`` (statistics re-estimated when ``averaged`` and ``reset_bn``)."""
        return pool.soup(state, reset_bn=averaged and self.reset_bn)

    def _uniform(self, pool: Pool, used: list[int]) -> dict[str, float]:
        return {f"weight/{i}": (1.0 / len(used) if i in used else 0.0) for i in range(len(pool.members))}


class UniformSoup(_Soup):
    """The element-wise mean of every member's weights."""

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        self._check(pool, self.require_shared_init)
        used = list(range(len(pool.members)))
        state = average_state_dicts(pool.states())
        return pool.fused(self._model(pool, state, averaged=len(used) > 1), used, self._uniform(pool, used))


class GreedySoup(_Soup):
    """Members by validation accuracy, each kept only if the soup's validation accuracy improves (each candidate
    soup scored with its BatchNorm statistics re-estimated when ``reset_bn``)."""

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        self._check(pool, self.require_shared_init)

        def evaluate(state: dict[str, Tensor]) -> float:
            return pool.score(self._model(pool, state))

        states = pool.states()
        state, used, _ = greedy_soup(states, pool.member_accuracy("val"), evaluate)
        return pool.fused(self._model(pool, state, averaged=len(used) > 1), used, self._uniform(pool, used))


class _ScaledMerge(_Soup):
    """A merge of task vectors (members minus their shared source) added to the source with a scale chosen on the
    validation split from ``scales``; logs the chosen ``merge/scale`` and each scale's ``merge/val_acc_at_<s>``."""

    needs_source = True

    def __init__(self, scales: Sequence[float], reset_bn: bool = True) -> None:
        if not scales:
            raise ConfigError(f"fusion_method.{type(self).__name__}: scales is empty; give the grid to choose from")
        super().__init__(require_shared_init=True, reset_bn=reset_bn)
        self.scales = [float(s) for s in scales]

    def merge(self, source: dict[str, Tensor], states: list[dict[str, Tensor]], scale: float) -> dict[str, Tensor]:
        raise NotImplementedError

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        self._check(pool, require_shared_init=True)
        if pool.source is None:
            raise FusionError(f"{type(self).__name__} needs the members' source weights: load the pool with them")
        states = pool.states()
        scores, best = {}, None
        for scale in self.scales:
            model = self._model(pool, self.merge(pool.source, states, scale))
            scores[scale] = pool.score(model)
            if best is None or scores[scale] > scores[best[0]]:
                best = (scale, model)
        scale, model = best
        weights = {"merge/scale": scale} | {f"merge/val_acc_at_{s:g}": acc for s, acc in scores.items()}
        return pool.fused(model, list(range(len(pool.members))), weights)


class TaskArithmetic(_ScaledMerge):
    """Task arithmetic (Ilharco et al. 2023): the source plus ``scale`` times the sum of the task vectors."""

    def __init__(self, scales: Sequence[float] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0), reset_bn: bool = True) -> None:
        super().__init__(scales, reset_bn)

    def merge(self, source: dict[str, Tensor], states: list[dict[str, Tensor]], scale: float) -> dict[str, Tensor]:
        return merging.task_arithmetic(source, states, scale)


class Ties(_ScaledMerge):
    """TIES-merging (Yadav et al. 2023): task vectors trimmed to their ``density`` largest entries, signs elected,
    the agreeing values averaged, added to the source with ``scale``."""

    def __init__(
        self, scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5), density: float = 0.2, reset_bn: bool = True
    ) -> None:
        if not 0.0 < density <= 1.0:
            raise ConfigError(f"fusion_method.ties.density must be in (0, 1], got {density}")
        super().__init__(scales, reset_bn)
        self.density = density

    def merge(self, source: dict[str, Tensor], states: list[dict[str, Tensor]], scale: float) -> dict[str, Tensor]:
        return merging.ties(source, states, scale, self.density)


class FisherMerge(_Soup):
    """Fisher merging (Matena & Raffel 2022): each weight the members' values weighted by their diagonal Fisher,
    estimated on the first ``images`` training images of the fusion data (of each member's own task, for a
    multi-task pool).

    Args:
        images: training images each member's Fisher is estimated on (one backward pass per image).
        labels: ``sampled`` (labels drawn from the member's own prediction, the true Fisher, as in the paper) or
            ``true`` (the data's labels, the empirical Fisher).
        floor: added to every Fisher value, so weights no member depends on are plainly averaged.
        reset_bn: as for the soups.
    """

    LABELS = ("sampled", "true")

    def __init__(self, images: int = 256, labels: str = "sampled", floor: float = 1e-8, reset_bn: bool = True) -> None:
        if labels not in self.LABELS:
            raise ConfigError(f"fusion_method.fisher.labels must be one of {list(self.LABELS)}, got {labels!r}")
        if images < 1:
            raise ConfigError(f"fusion_method.fisher.images must be at least 1, got {images}")
        super().__init__(require_shared_init=True, reset_bn=reset_bn)
        self.images, self.labels, self.floor = images, labels, floor

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        self._check(pool, require_shared_init=True)
        fishers = []
        for i, member in enumerate(pool.members):
            inputs, given = pool.fisher_inputs(i, self.images, self.labels == "true")
            fishers.append(merging.diagonal_fisher(member.net, inputs, given))
        state = merging.fisher_merge(pool.states(), fishers, self.floor)
        used = list(range(len(pool.members)))  # each weight has its own weighting: no one weight per member
        return pool.fused(self._model(pool, state, averaged=len(used) > 1), used, {})


class FeatureConcat(FusionMethod):
    """Feature-level fusion of trained runs: the members' frozen backbones, their pooled features
    concatenated, and a new linear head trained on the labelled training split (features computed once).

    Args:
        epochs: full-batch Adam steps on the cached features; the step with the best validation accuracy wins.
        lr: Adam learning rate.
        weight_decay: L2 penalty on the head.
    """

    def __init__(self, epochs: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4) -> None:
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay

    @staticmethod
    @torch.no_grad()
    def features(members: list[Member], raw: Tensor) -> Tensor:
        return torch.cat([m.features(raw) for m in members], dim=1)

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        members = pool.members
        feats = {split: self.features(members, images) for split, images in pool.images.items()}
        head = nn.Linear(feats["train"].shape[1], pool.logits["val"].shape[-1])
        optimizer = torch.optim.Adam(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state = -1.0, None
        for _ in range(self.epochs):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(feats["train"]), pool.labels["train"]).backward()
            optimizer.step()
            with torch.no_grad():
                score = pool.accuracy(head(feats["val"]), "val")
            if score > best:
                best, best_state = score, {k: v.clone() for k, v in head.state_dict().items()}
        head.load_state_dict(best_state)
        head.eval()
        used = list(range(len(members)))
        with torch.no_grad():
            logits = {split: head(feats[split]) for split in pool.logits}
        modules = [*(m.net.backbone for m in members), head]
        return Fused(logits, lambda raw: head(self.features(members, raw)), modules, used)


class Distill(FusionMethod):
    """Knowledge distillation: one student trained on the fused teacher's soft targets (and the labels).

    Args:
        teacher: how the members' logits are fused into the teacher (``logit_mean`` or ``prob_mean``).
        temperature: softening temperature.
        alpha: weight of the distillation loss against cross-entropy.
        student_init: where the student starts (``init.weights`` syntax: none, runs:/<id>, a filter...).
    """

    RULES = {"logit_mean": combine.logit_mean, "prob_mean": combine.prob_mean}
    trains_student = True

    def __init__(
        self, teacher: str = "logit_mean", temperature: float = 4.0, alpha: float = 0.9, student_init: str = "none"
    ) -> None:
        if teacher not in self.RULES:
            raise ConfigError(f"fusion_method.teacher must be one of {sorted(self.RULES)}, got {teacher!r}")
        self.rule, self.temperature, self.alpha, self.student_init = teacher, temperature, alpha, student_init

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        if students is None:
            raise FusionError("distillation trains a student: call fuse(pool, students)")
        members, rule = pool.members, self.RULES[self.rule]

        def teacher(raw: Tensor) -> Tensor:
            return rule(torch.stack([m.predict(raw) for m in members]))

        student = students.build(self.student_init, teacher=teacher, temperature=self.temperature, alpha=self.alpha)
        student = students.fit(student).eval()

        @torch.no_grad()
        def predict(raw: Tensor) -> Tensor:
            device = next(student.parameters()).device
            return torch.cat([student(raw[i : i + 256].to(device)).float().cpu() for i in range(0, len(raw), 256)])

        logits = {split: predict(pool.images[split]) for split in pool.logits}
        net_state = {k: v for k, v in student.state_dict().items() if k.startswith(("backbone.", "head."))}
        return Fused(logits, predict, [student.backbone, student.head], [], {}, net_state)
