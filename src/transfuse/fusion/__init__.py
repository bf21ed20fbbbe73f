"""Fusing trained runs. Three roles kept apart (as in FusionBench): what is fused (:mod:`.members`, :mod:`.pool`),
how (:mod:`.methods` over the pure functions of :mod:`.combine` and :mod:`.soups`, :mod:`.students` for the
methods that train), and how the result is scored (:mod:`.evaluate`)."""

from transfuse.fusion.combine import Stacker, fit_weights, logit_mean, prob_mean, vote, weighted
from transfuse.fusion.members import Classifier, Member, find_members, load_member
from transfuse.fusion.soups import average_state_dicts, check_soup_members, greedy_soup

__all__ = [
    "Classifier",
    "Member",
    "Stacker",
    "average_state_dicts",
    "check_soup_members",
    "find_members",
    "fit_weights",
    "greedy_soup",
    "load_member",
    "logit_mean",
    "prob_mean",
    "vote",
    "weighted",
]
