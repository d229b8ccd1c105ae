"""SAM's image-encoder neck: project the stride-16 ViT map to 256 channels (1x1 conv, LayerNorm,
3x3 conv, LayerNorm; convs without bias)."""
from __future__ import annotations

from typing import Mapping

import torch
from timm.layers import LayerNorm2d
from torch import nn

from densevit.registry import MODELS

from ..contract import FeatureSpec

__all__ = ['SamNeck']


@MODELS.register_module()
class SamNeck(nn.Module):
    """``{in_feature: (B, C, H, W)}`` -> ``{in_feature: (B, out_channels, H, W)}``."""

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec], in_feature: str = 's16',
                 out_channels: int = 256) -> None:
        """
        Args:
            input_shapes: the feeding backbone's ``out_features``.
            in_feature: the map to project; the output keeps its name and stride.
            out_channels: output channels (256 in SAM).
        """
        super().__init__()
        if in_feature not in input_shapes:
            raise KeyError(f'SamNeck in_feature {in_feature!r} is not among the input features '
                           f'{sorted(input_shapes)}')
        spec = input_shapes[in_feature]
        self.in_feature = in_feature
        self.conv1 = nn.Conv2d(spec.channels, out_channels, kernel_size=1, bias=False)
        self.norm1 = LayerNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(out_channels)
        self.out_features = {in_feature: FeatureSpec(out_channels, spec.stride)}

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.norm1(self.conv1(features[self.in_feature]))
        return {self.in_feature: self.norm2(self.conv2(x))}
