"""FCNHead: a few 3x3 conv-BN-ReLU layers and a 1x1 classifier on one feature map, used as the
auxiliary head of UperNet (on 's16', loss weight 0.4)."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ...registry import MODELS
from ..contract import FeatureSpec
from ..losses import SegCriterion
from .base import SegHead, norm_layer_type, select_inputs
from .conv_norm import ConvNormAct

__all__ = ['FCNHead']


@MODELS.register_module()
class FCNHead(SegHead):
    """Conv stack + classifier on one feature map (logits at that map's stride).

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head.
        in_features: a one-name tuple, e.g. ('s16',).
        num_classes: K.
        channels: width of the conv layers.
        num_convs: number of 3x3 conv-BN-ReLU layers (0 = classifier directly on the input).
        concat_input: concatenate the input with the conv output before the classifier (through
            one more 3x3 conv).
        dropout_ratio: dropout before the classifier.
        loss_decode: loss config(s) built with MODELS.
        sampler: optional pixel sampler config (e.g. OHEMPixelSampler).
        ignore_index: label ignored by accuracy and sampler.
        align_corners: for the bilinear resizes.
        norm_layer: 2-d norm layer: 'BN' (BatchNorm2d), 'SyncBN' (statistics shared across the
            processes of a distributed run, as mmseg's SyncBN; plain BatchNorm on one process),
            or a norm layer type.
    """

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s16',), num_classes: int, channels: int = 256,
                 num_convs: int = 1, concat_input: bool = False, dropout_ratio: float = 0.1,
                 loss_decode: dict | list[dict] = dict(type='CrossEntropyLoss'),
                 sampler: dict | None = None, ignore_index: int = 255,
                 align_corners: bool = False,
                 norm_layer: str | Callable[..., nn.Module] = 'BN') -> None:
        super().__init__()
        norm_layer = norm_layer_type(norm_layer, type(self).__name__)
        if len(in_features) != 1:
            raise ValueError(f'{type(self).__name__} consumes one feature map; got in_features='
                             f'{tuple(in_features)} (e.g. in_features=("s16",))')
        (spec,) = select_inputs(input_shapes, in_features, type(self).__name__)
        self.in_features = tuple(in_features)
        self.num_classes = num_classes
        self.align_corners = align_corners
        layers = []
        for i in range(num_convs):
            layers.append(ConvNormAct(spec.channels if i == 0 else channels, channels, 3,
                                      norm_layer=norm_layer))
        self.convs = nn.Sequential(*layers)
        out_channels = channels if num_convs > 0 else spec.channels
        self.conv_cat = (ConvNormAct(spec.channels + out_channels, channels, 3,
                                     norm_layer=norm_layer)
                         if concat_input else None)
        if concat_input:
            out_channels = channels
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(out_channels, num_classes, 1)
        self.criterion = SegCriterion(loss_decode=loss_decode, sampler=sampler,
                                      ignore_index=ignore_index, align_corners=align_corners)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_features[0]]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))

