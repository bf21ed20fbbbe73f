"""Any timm model as a headless feature extractor."""

from __future__ import annotations

from collections.abc import Sequence

import timm
from torch import Tensor, nn

from transfuse.errors import ConfigError


class TimmBackbone(nn.Module):
    """A timm model created with ``num_classes=0``, so ``forward`` returns pooled features.

    Args:
        name: any name ``timm.list_models()`` knows.
        in_chans: input channels (timm adapts the stem).
        image_size: input side; models with a fixed input size (ViTs) are built for it.
        mean: normalisation the data should use (kept here so presets can follow the model).
        std: see ``mean``.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (``drop_rate``, ``drop_path_rate``...).
    """

    def __init__(
        self,
        name: str,
        in_chans: int = 3,
        image_size: int = 224,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.name, self.in_chans, self.image_size = name, in_chans, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.model_kwargs = dict(model_kwargs or {})
        self.model = self.create(pretrained=False)
        self.num_features: int = self.model.num_features

    def create(self, pretrained: bool) -> nn.Module:
        """Build the timm model this backbone wraps (``pretrained=True`` fetches hub weights)."""
        if not timm.is_model(self.name):
            raise ConfigError(f"timm has no model named {self.name!r} (see timm.list_models())")
        kwargs = dict(self.model_kwargs)
        default_cfg = timm.models.get_pretrained_cfg(self.name)
        if default_cfg is not None and default_cfg.fixed_input_size:
            kwargs.setdefault("img_size", self.image_size)
        return timm.create_model(self.name, pretrained=pretrained, num_classes=0, in_chans=self.in_chans, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
