"""A backbone with an optional neck, as one module: images -> named feature maps (e.g. SAM's
image encoder, or a feature extractor for prompting)."""
from __future__ import annotations

import torch
from torch import nn

from densevit.registry import MODELS

from ..contract import FeatureSpec

__all__ = ['ImageEncoder']


@MODELS.register_module()
class ImageEncoder(nn.Module):
    """``forward(images) = neck(backbone(images))`` (or ``backbone(images)`` without a neck)."""

    def __init__(self, *, backbone: dict, neck: dict | None = None) -> None:
        """
        Args:
            backbone: config of a registered backbone (``type`` and its keywords).
            neck: config of a registered neck, built with ``input_shapes`` = the backbone's
                ``out_features``; None for the backbone's maps as they are.
        """
        super().__init__()
        self.backbone = MODELS.build(backbone)
        self.neck = (MODELS.build(neck, default_args=dict(input_shapes=self.backbone.out_features))
                     if neck is not None else None)

    @property
    def out_features(self) -> dict[str, FeatureSpec]:
        return dict(self.neck.out_features if self.neck is not None
                    else self.backbone.out_features)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        return self.neck(features) if self.neck is not None else features
