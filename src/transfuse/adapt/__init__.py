"""Unsupervised domain adaptation: alignment losses between source and target features, and a domain gap measure."""

from transfuse.adapt.data import DomainPair
from transfuse.adapt.losses import (
    DomainDiscriminator,
    GradientReversal,
    GradientReversalLayer,
    coral_loss,
    dann_loss,
    ganin_lambda,
    grad_reverse,
    mmd_loss,
    proxy_a_distance,
)
from transfuse.adapt.model import AdaptClassifier

__all__ = [
    "AdaptClassifier",
    "DomainDiscriminator",
    "DomainPair",
    "GradientReversal",
    "GradientReversalLayer",
    "coral_loss",
    "dann_loss",
    "ganin_lambda",
    "grad_reverse",
    "mmd_loss",
    "proxy_a_distance",
]
