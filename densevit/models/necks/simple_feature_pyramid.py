"""ViTDet's simple feature pyramid: one stride-16 map of a plain ViT -> strides 4..32 (and 64).

Each output level resamples the input (two stride-2 transposed convs for x4, one for x2, nothing
for x1, a 2x2 max-pool for x0.5, two for x0.25), then applies a 1x1 conv + LayerNorm and a 3x3 conv + LayerNorm.
An optional top block max-pools the coarsest level once more (stride 64), as ViTDet's
LastLevelMaxPool does for detection.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from densevit.registry import MODELS

from ..contract import FeatureSpec

__all__ = ['SimpleFeaturePyramid']


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Bias-free conv followed by a channel LayerNorm, 'same' padding."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                       bias=False),
        norm=LayerNorm2d(out_channels)))


_SCALES = (4.0, 2.0, 1.0, 0.5, 0.25)


def _resample(scale: float, channels: int) -> tuple[nn.Sequential, int]:
    """The resampling layers for one scale factor and the channels they output."""
    if scale == 4.0:
        layers = [nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2),
                  LayerNorm2d(channels // 2), nn.GELU(),
                  nn.ConvTranspose2d(channels // 2, channels // 4, kernel_size=2, stride=2)]
        return nn.Sequential(*layers), channels // 4
    if scale == 2.0:
        return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2,
                                                stride=2)), channels // 2
    if scale == 1.0:
        return nn.Sequential(), channels
    if scale in (0.5, 0.25):
        # ceil mode: an odd side keeps its last row / column (ceil(H / stride) outputs)
        pools = [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
                 for _ in range(1 if scale == 0.5 else 2)]
        return nn.Sequential(*pools), channels
    raise ValueError(f'scale factor {scale} is not supported; use 4.0, 2.0, 1.0, 0.5 or 0.25')


@MODELS.register_module()
class SimpleFeaturePyramid(nn.Module):
    """Multi-scale maps from one plain-ViT map (ViTDet).

    Input ``{in_feature: (B, C, H, W)}`` at stride s; output ``{'s{s / f}': (B, out_channels,
    ...)}`` for every scale factor f, plus ``'s{2 * coarsest}'`` with ``top_block``. Stride-2
    max-pools keep odd edges (ceil mode), so coarser levels are ceil(input / 2). Upsampled levels
    are exactly 2x / 4x the input map, which is ceil(image / stride) when the image side is a
    multiple of the input stride (ViT pads to its patch size, so other sides give the padded
    extent at the finer levels).
    """

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec], in_feature: str = 's16',
                 out_channels: int = 256,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 top_block: bool = False) -> None:
        """
        Args:
            input_shapes: the feeding backbone's ``out_features``.
            in_feature: the name of the map to build the pyramid from.
            out_channels: channels of every output level.
            scale_factors: resampling of each level relative to the input, finest first; each
                must be 4.0, 2.0, 1.0, 0.5 or 0.25 (0.25: s32 from a patch-8 ViT) and the
                strides must double from level to level.
            top_block: add one more level, the coarsest max-pooled by 2 (stride 64 for ViTDet).
        """
        super().__init__()
        if in_feature not in input_shapes:
            raise KeyError(f'SimpleFeaturePyramid in_feature {in_feature!r} is not among the '
                           f'input features {sorted(input_shapes)}')
        spec = input_shapes[in_feature]
        self.in_feature = in_feature
        unsupported = [f for f in scale_factors if float(f) not in _SCALES]
        if unsupported:
            raise ValueError(f'scale factors {unsupported} are not supported; use one of '
                             f'{_SCALES}')
        strides = [spec.stride / scale for scale in scale_factors]
        for stride in strides:
            if stride != int(stride) or stride < 1:
                raise ValueError(f'scale factors {list(scale_factors)} on an input of stride '
                                 f'{spec.stride} give non-integer stride {stride}')
        strides = [int(s) for s in strides]
        for finer, coarser in zip(strides, strides[1:]):
            if coarser != 2 * finer:
                raise ValueError(f'output strides {strides} (from scale factors '
                                 f'{list(scale_factors)}) must double from level to level')
        self.resample = nn.ModuleDict()
        self.lateral = nn.ModuleDict()
        self.output = nn.ModuleDict()
        for scale, stride in zip(scale_factors, strides):
            name = f's{stride}'
            layers, mid_channels = _resample(float(scale), spec.channels)
            self.resample[name] = layers
            self.lateral[name] = _conv_norm(mid_channels, out_channels, 1)
            self.output[name] = _conv_norm(out_channels, out_channels, 3)
        self.top_block = top_block
        if top_block:
            strides.append(2 * strides[-1])
        self.out_features = {f's{s}': FeatureSpec(out_channels, s) for s in strides}

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[self.in_feature]
        outs = {}
        for name, resample in self.resample.items():
            outs[name] = self.output[name](self.lateral[name](resample(x)))
        if self.top_block:
            last = outs[next(reversed(self.resample.keys()))]
            # ViTDet's LastLevelMaxPool: kernel 1, stride 2 (a subsample of the coarsest level)
            outs[next(reversed(self.out_features))] = F.max_pool2d(last, kernel_size=1, stride=2)
        return outs
