"""Backbones, heads and the LightningModule that joins them."""

from transfuse.models.backbones import EarlyFusion, TimmBackbone, ViewBranches
from transfuse.models.classifier import ImageClassifier
from transfuse.models.heads import (
    AttentionHead,
    BilinearHead,
    ConcatHead,
    GatedHead,
    Head,
    LateHead,
    LinearHead,
    MLPHead,
    SumHead,
)

__all__ = [
    "AttentionHead",
    "BilinearHead",
    "ConcatHead",
    "EarlyFusion",
    "GatedHead",
    "Head",
    "ImageClassifier",
    "LateHead",
    "LinearHead",
    "MLPHead",
    "SumHead",
    "TimmBackbone",
    "ViewBranches",
]
