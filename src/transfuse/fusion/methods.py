"""The ``fusion_method=`` options of ``transfuse-fuse``: each turns a pool of members into one fused model.

A method's ``fuse(pool, students)`` gets a :class:`~transfuse.fusion.pool.Pool` (members, data, the members'
logits) and, for the methods that train a model, :class:`~transfuse.fusion.students.Students`; it returns a
:class:`Fused`: its logits per split, a ``predict`` function from raw images (used to time it), its parameter
count, any fusion weights, and for soups and students the weights to save. Scoring is
:mod:`transfuse.fusion.evaluate`'s job.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from transfuse.errors import ConfigError, FusionError
from transfuse.fusion import combine
from transfuse.fusion.members import Member
from transfuse.fusion.pool import Pool
from transfuse.fusion.soups import average_state_dicts, check_soup_members, greedy_soup
from transfuse.fusion.students import Students


@dataclass
class Fused:
    """A fused model: its scores per split and what it costs."""

    logits: dict[str, Tensor]
    predict: Callable[[Tensor], Tensor]
    params: int
    used: list[int]
    weights: dict[str, float] = field(default_factory=dict)
    state_dict: dict[str, Tensor] | None = None


class FusionMethod:
    """Base of every method: ``fuse(pool, students)`` returns a :class:`Fused`.

    ``trains_student`` tells the entry point to check, before any run opens, that the config's student builds.
    """

    trains_student: ClassVar[bool] = False

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        raise NotImplementedError


def _params(members: list[Member], used: list[int]) -> int:
    return sum(p.numel() for i in used for p in members[i].net.parameters())


class BestMember(FusionMethod):
    """No fusion: the single member with the best validation accuracy (the baseline every fusion must beat)."""

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        accuracy = pool.member_accuracy("val")
        best = max(range(len(pool.members)), key=lambda i: accuracy[i])
        member = pool.members[best]
        weights = {f"weight/{i}": float(i == best) for i in range(len(pool.members))}
        logits = {split: member_logits[best] for split, member_logits in pool.logits.items()}
        return Fused(logits, member.predict, _params(pool.members, [best]), [best], weights)


class DecisionRule(FusionMethod):
    """Combine every member's logits with a fixed rule (``logit_mean``, ``prob_mean``, ``vote``)."""

    rule: Callable[[Tensor], Tensor] = staticmethod(combine.logit_mean)

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        members, used = pool.members, list(range(len(pool.members)))
        return Fused(
            {split: self.rule(logits) for split, logits in pool.logits.items()},
            lambda raw: self.rule(torch.stack([m.predict(raw) for m in members])),
            _params(members, used),
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
            _params(members, used),
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
            _params(members, used),
            used,
            {f"weight/{i}": float(v) for i, v in enumerate(share / share.sum())},
        )


class _Soup(FusionMethod):
    def __init__(self, require_shared_init: bool = True) -> None:
        self.require_shared_init = require_shared_init

    def _model(self, pool: Pool, state: dict[str, Tensor]) -> Member:
        member = copy.copy(pool.members[0])
        member.net = copy.deepcopy(member.net)
        member.net.load_state_dict(state)
        return member

    def _fused(self, pool: Pool, state: dict[str, Tensor], used: list[int]) -> Fused:
        soup = self._model(pool, state)
        logits = {split: soup.predict(pool.images[split]) for split in pool.logits}
        weights = {f"weight/{i}": (1.0 / len(used) if i in used else 0.0) for i in range(len(pool.members))}
        return Fused(logits, soup.predict, _params(pool.members, used[:1]), used, weights, state)


class UniformSoup(_Soup):
    """The element-wise mean of every member's weights."""

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        check_soup_members(pool.members, self.require_shared_init)
        used = list(range(len(pool.members)))
        return self._fused(pool, average_state_dicts([m.net.state_dict() for m in pool.members]), used)


class GreedySoup(_Soup):
    """Members by validation accuracy, each kept only if the soup's validation accuracy improves."""

    def fuse(self, pool: Pool, students: Students | None = None) -> Fused:
        check_soup_members(pool.members, self.require_shared_init)

        def evaluate(state: dict[str, Tensor]) -> float:
            return pool.accuracy(self._model(pool, state).predict(pool.images["val"]), "val")

        states = [m.net.state_dict() for m in pool.members]
        state, used, _ = greedy_soup(states, pool.member_accuracy("val"), evaluate)
        return self._fused(pool, state, used)


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
        params = sum(p.numel() for m in members for p in m.net.backbone.parameters())
        params += sum(p.numel() for p in head.parameters())
        return Fused(logits, lambda raw: head(self.features(members, raw)), params, used)


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
        params = sum(p.numel() for p in student.backbone.parameters()) + sum(
            p.numel() for p in student.head.parameters()
        )
        return Fused(logits, predict, params, [], {}, net_state)
