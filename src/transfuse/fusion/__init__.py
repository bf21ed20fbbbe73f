"""Fusing trained runs: decision-level ensembles, weight-space soups, and the members they are made of."""

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
