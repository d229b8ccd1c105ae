"""ChannelMapper: project several backbone maps to one width, plus extra coarser levels.

This is Deformable DETR's ``input_proj``: each input level gets a 1x1 conv + GroupNorm(32) to
``out_channels``; each extra level is a 3x3 stride-2 conv + GroupNorm, the first applied to the
coarsest *input* map (the backbone's raw map, not its projection), the next ones to the previous
extra level. Conv weights are Xavier-uniform with zero bias, as in Deformable DETR.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import torch
from torch import nn

from densevit.registry import MODELS

from ..contract import FeatureSpec

__all__ = ['ChannelMapper']


def _conv_gn(in_channels: int, out_channels: int, kernel_size: int, stride: int,
             num_groups: int) -> nn.Sequential:
    """Conv (with bias, 'same' padding) followed by GroupNorm, Xavier-initialised."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2)
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(OrderedDict(conv=conv, norm=nn.GroupNorm(num_groups, out_channels)))


@MODELS.register_module()
class ChannelMapper(nn.Module):
    """``{name: (B, C_name, H / s, W / s)}`` -> ``{name: (B, out_channels, H / s, W / s)}`` for
    each of ``in_features``, plus ``num_extra_levels`` maps at strides 2s_last, 4s_last, ...
    named by their stride (``'s64'`` after an ``'s32'`` input). A 3x3 stride-2 conv with padding 1
    gives ceil(n / 2) outputs, so the extra levels keep the contract's ceil(H / stride) sizes.
    """

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s8', 's16', 's32'), out_channels: int = 256,
                 num_extra_levels: int = 1, num_groups: int = 32) -> None:
        """
        Args:
            input_shapes: the feeding backbone's ``out_features``.
            in_features: the maps to project, finest first (strides must increase).
            out_channels: channels of every output level (256 in Deformable DETR).
            num_extra_levels: stride-2 levels added after the coarsest input (1 in Deformable
                DETR and DINO: s8, s16, s32 -> s8 ... s64).
            num_groups: GroupNorm groups; must divide ``out_channels``.
        """
        super().__init__()
        in_features = tuple(in_features)
        if not in_features:
            raise ValueError('ChannelMapper needs at least one in_feature')
        missing = [name for name in in_features if name not in input_shapes]
        if missing:
            raise KeyError(f'ChannelMapper in_features {missing} are not among the input '
                           f'features {sorted(input_shapes)}')
        strides = [input_shapes[name].stride for name in in_features]
        if any(coarser <= finer for finer, coarser in zip(strides, strides[1:])):
            raise ValueError(f'ChannelMapper in_features {list(in_features)} must go from fine to '
                             f'coarse; their strides are {strides}')
        if num_extra_levels < 0:
            raise ValueError(f'num_extra_levels must be >= 0; got {num_extra_levels}')
        if out_channels % num_groups:
            raise ValueError(f'GroupNorm num_groups={num_groups} does not divide '
                             f'out_channels={out_channels}')
        self.in_features = in_features
        self.lateral = nn.ModuleDict({
            name: _conv_gn(input_shapes[name].channels, out_channels, 1, 1, num_groups)
            for name in in_features})
        self.extra = nn.ModuleDict()
        self.out_features = {name: FeatureSpec(out_channels, input_shapes[name].stride)
                             for name in in_features}
        channels, stride = input_shapes[in_features[-1]].channels, strides[-1]
        for _ in range(num_extra_levels):
            stride *= 2
            name = f's{stride}'
            if name in self.out_features:
                raise ValueError(f'ChannelMapper extra level {name!r} collides with an input '
                                 f'level of {list(in_features)}')
            self.extra[name] = _conv_gn(channels, out_channels, 3, 2, num_groups)
            self.out_features[name] = FeatureSpec(out_channels, stride)
            channels = out_channels

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = {name: proj(features[name]) for name, proj in self.lateral.items()}
        x = features[self.in_features[-1]]  # the first extra level reads the raw coarsest map
        for name, conv in self.extra.items():
            x = conv(x)
            outs[name] = x
        return outs
