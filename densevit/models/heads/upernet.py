"""UPerHead, the UperNet decoder (Xiao et al., 2018): a pyramid pooling module on the deepest map,
FPN top-down fusion over all levels, then every level upsampled to the finest and fused."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import MODELS
from ..contract import FeatureSpec
from ..losses import SegCriterion
from .base import SegHead, norm_layer_type, select_inputs
from .conv_norm import ConvNormAct, fold_batch_norm

__all__ = ['UPerHead', 'PyramidPooling']


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling: average-pool to each scale, 1x1 conv, upsample back, concatenate
    with the input and fuse with a 3x3 conv.

    Args:
        in_channels: channels of the input map.
        channels: channels of each pooled branch and of the output.
        pool_scales: output sizes of the adaptive average pools.
        align_corners: for the bilinear upsampling.
        norm_layer: 2-d norm layer type.
    """

    def __init__(self, *, in_channels: int, channels: int, pool_scales: Sequence[int],
                 align_corners: bool, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale),
                          ConvNormAct(in_channels, channels, 1, norm_layer=norm_layer))
            for scale in pool_scales)
        self.bottleneck = ConvNormAct(in_channels + len(pool_scales) * channels, channels, 3,
                                      norm_layer=norm_layer)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [F.interpolate(branch(x), size=x.shape[-2:], mode='bilinear',
                                    align_corners=self.align_corners) for branch in self.branches]
        return self.bottleneck(torch.cat(outs, dim=1))


@MODELS.register_module()
class UPerHead(SegHead):
    """UperNet decoder over several feature maps; logits at the stride of the finest one.

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head (backbone or neck outputs).
        in_features: names consumed, finest first, e.g. ('s4', 's8', 's16', 's32'); PPM runs on
            the last. Strides must increase.
        num_classes: K.
        channels: width of the PPM, lateral and FPN convs.
        pool_scales: PPM pool sizes.
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
                 in_features: Sequence[str] = ('s4', 's8', 's16', 's32'), num_classes: int,
                 channels: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 dropout_ratio: float = 0.1,
                 loss_decode: dict | list[dict] = dict(type='CrossEntropyLoss'),
                 sampler: dict | None = None, ignore_index: int = 255,
                 align_corners: bool = False,
                 norm_layer: str | Callable[..., nn.Module] = 'BN') -> None:
        super().__init__()
        norm_layer = norm_layer_type(norm_layer, type(self).__name__)
        specs = select_inputs(input_shapes, in_features, type(self).__name__)
        strides = [s.stride for s in specs]
        if strides != sorted(set(strides)):
            raise ValueError(f'UPerHead in_features {tuple(in_features)} must go from fine to '
                             f'coarse with increasing strides; got strides {strides}')
        self.in_features = tuple(in_features)
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.ppm = PyramidPooling(in_channels=specs[-1].channels, channels=channels,
                                  pool_scales=pool_scales, align_corners=align_corners,
                                  norm_layer=norm_layer)
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(s.channels, channels, 1, norm_layer=norm_layer)
            for s in specs[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
            for _ in specs[:-1])
        self.fpn_bottleneck = ConvNormAct(len(specs) * channels, channels, 3,
                                          norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.criterion = SegCriterion(loss_decode=loss_decode, sampler=sampler,
                                      ignore_index=ignore_index, align_corners=align_corners)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode='bilinear',
                             align_corners=self.align_corners)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = [features[name] for name in self.in_features]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs[:-1])]
        laterals.append(self.ppm(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into the next finer level
            finer = laterals[i - 1]
            laterals[i - 1] = finer + self._resize(laterals[i], finer.shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        return self.conv_seg(self.dropout(self._fuse_levels(outs)))

    def _fuse_levels(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """``fpn_bottleneck`` over all levels upsampled to the finest and concatenated.

        At inference the convolution of the concatenation is computed as the sum of each
        level's convolution with its slice of the (BatchNorm-folded) weight: the same sum of
        products without the (B, L*C, H, W) concatenated map, so a level's upsampled copy lives
        only while its term is added. Training concatenates, as the reference UperNet does.
        """
        size = outs[0].shape[-2:]
        block = self.fpn_bottleneck
        if not block._foldable():
            return block(torch.cat([outs[0]] + [self._resize(x, size) for x in outs[1:]], dim=1))
        conv = block[0]
        weight, bias = fold_batch_norm(conv, block[1])
        # (C, L*C, 3, 3) -> L x (C, C, 3, 3), in the order of the concatenation
        weights = weight.split([x.shape[1] for x in outs], dim=1)
        fused = F.conv2d(outs[0], weights[0], bias, conv.stride, conv.padding, conv.dilation)
        for x, w in zip(outs[1:], weights[1:]):
            fused.add_(F.conv2d(self._resize(x, size), w, None, conv.stride, conv.padding,
                                conv.dilation))
        return F.relu_(fused) if len(block) == 3 else fused

