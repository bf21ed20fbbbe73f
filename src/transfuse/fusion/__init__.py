"""Fusing trained runs. Three roles kept apart (as in FusionBench): what is fused (:mod:`.members`, :mod:`.pool`),
how (:mod:`.methods` over the pure functions of :mod:`.combine`, :mod:`.soups` and :mod:`.merging`,
:mod:`.students` for the methods that train), and how the result is scored (:mod:`.evaluate`)."""

from transfuse.fusion.combine import Stacker, fit_weights, logit_mean, prob_mean, vote, weighted
from transfuse.fusion.members import Classifier, Member, find_members, load_member, load_source
from transfuse.fusion.merging import fisher_merge, reset_bn, task_arithmetic, task_vectors, ties
from transfuse.fusion.soups import average_state_dicts, check_soup_members, greedy_soup

__all__ = [
    "Classifier",
    "Member",
    "Stacker",
    "average_state_dicts",
    "check_soup_members",
    "find_members",
    "fisher_merge",
    "fit_weights",
    "greedy_soup",
    "load_member",
    "load_source",
    "logit_mean",
    "prob_mean",
    "reset_bn",
    "task_arithmetic",
    "task_vectors",
    "ties",
    "vote",
    "weighted",
]
