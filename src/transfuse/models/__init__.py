"""Backbones, heads and the LightningModule that joins them."""

from transfuse.models.backbone import TimmBackbone
from transfuse.models.classifier import ImageClassifier
from transfuse.models.heads import LinearHead, MLPHead

__all__ = ["ImageClassifier", "LinearHead", "MLPHead", "TimmBackbone"]
