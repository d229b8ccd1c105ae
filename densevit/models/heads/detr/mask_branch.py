"""Mask DINO's instance-mask branch (Li et al., 2023): a stride-4 per-pixel embedding and the
query mask embedding that is dotted with it.

Pixel embedding (the last step of Mask DINO's ``MaskDINOEncoder.forward_features``): the finest
map of the multi-scale encoder memory (stride 8) is resized bilinearly to the stride-4 feature's
size and added to a lateral 1x1 conv (+GN) of that feature; a 3x3 conv (+GN, ReLU) and a 1x1 conv
to ``mask_dim`` follow. Masks: ``einsum('bqc,bchw->bqhw', mask_embed(query_hidden), pixel_embed)``
with a 3-layer MLP ``mask_embed`` (Mask DINO applies it to the decoder-normed query features).

Official Mask DINO names, for a converter: ``sem_seg_head.pixel_decoder.adapter_1.{weight,norm.*}``
-> ``lateral_conv.{0.weight,1.*}``, ``pixel_decoder.layer_1.{weight,norm.*}`` ->
``output_conv.{0.weight,1.*}``, ``pixel_decoder.mask_features.*`` -> ``mask_features.*``,
``predictor.mask_embed.layers.{i}.*`` -> ``mask_embed.layers.{i}.*``.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation, box_convert, masks_to_boxes

from ....registry import MODELS
from ...contract import FeatureSpec
from ..base import select_inputs
from .detr import MLP

__all__ = ['MaskBranch', 'masks_to_normalized_boxes']


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's XavierFill, as detectron2's ``c2_xavier_fill`` (Mask DINO's conv init)."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@MODELS.register_module()
class MaskBranch(nn.Module):
    """Per-pixel embedding at stride 4 and query mask logits, as Mask DINO.

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head (backbone or neck outputs).
        in_features: the one fine map fused in, ('s4',) in Mask DINO; the masks come out at its
            stride.
        hidden_dim: width of the encoder memory maps and of the convs here.
        mask_dim: channels of the pixel embedding and of the query mask embedding.
        num_groups: GroupNorm groups (32 in Mask DINO); must divide hidden_dim.
        mask_embed_layers: Linear layers of the query mask embedding MLP (3 in Mask DINO).
    """

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s4',), hidden_dim: int = 256,
                 mask_dim: int = 256, num_groups: int = 32, mask_embed_layers: int = 3) -> None:
        super().__init__()
        if len(in_features) != 1:
            raise ValueError(f'MaskBranch fuses exactly one fine map; in_features is '
                             f'{tuple(in_features)}, choose one of {sorted(input_shapes)}')
        if hidden_dim % num_groups:
            raise ValueError(f'MaskBranch hidden_dim {hidden_dim} must divide by num_groups '
                             f'{num_groups} (GroupNorm)')
        (spec,) = select_inputs(input_shapes, in_features, type(self).__name__)
        self.in_features = tuple(in_features)
        self.stride = spec.stride
        self.hidden_dim = hidden_dim
        norm = partial(nn.GroupNorm, num_groups)
        self.lateral_conv = Conv2dNormActivation(spec.channels, hidden_dim, 1, norm_layer=norm,
                                                 activation_layer=None)
        self.output_conv = Conv2dNormActivation(hidden_dim, hidden_dim, 3, norm_layer=norm,
                                                activation_layer=nn.ReLU)
        self.mask_features = nn.Conv2d(hidden_dim, mask_dim, 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, mask_embed_layers)
        for conv in (self.lateral_conv[0], self.output_conv[0], self.mask_features):
            _c2_xavier_fill(conv)

    def pixel_embedding(self, features: Mapping[str, torch.Tensor],
                        memory_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: name -> (B, C, H, W); ``in_features[0]`` (stride 4) is used.
            memory_maps: encoder memory per level, each (B, hidden_dim, H_l, W_l); the one with
                the most positions (the finest, stride 8) is fused.

        Returns:
            (B, mask_dim, H4, W4) per-pixel embedding at the fine map's size.
        """
        if not memory_maps:
            raise ValueError('MaskBranch.pixel_embedding needs at least one memory map')
        finest = max(memory_maps, key=lambda m: m.shape[-2] * m.shape[-1])
        if finest.dim() != 4 or finest.shape[1] != self.hidden_dim:
            raise ValueError(f'MaskBranch expects memory maps (B, {self.hidden_dim}, H, W), got '
                             f'{tuple(finest.shape)}')
        lateral = self.lateral_conv(features[self.in_features[0]])  # (B, D, H4, W4)
        fused = lateral + F.interpolate(finest, size=lateral.shape[-2:], mode='bilinear',
                                        align_corners=False)
        return self.mask_features(self.output_conv(fused))

    def predict_masks(self, query_hidden: torch.Tensor, pixel_embed: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, Q, H4, W4) of query features (B, Q, hidden_dim) on the pixel embedding
        (B, mask_dim, H4, W4)."""
        return torch.einsum('bqc,bchw->bqhw', self.mask_embed(query_hidden), pixel_embed)


def masks_to_normalized_boxes(mask_logits: torch.Tensor,
                              valid_size: torch.Tensor | None = None) -> torch.Tensor:
    """Boxes around the positive pixels of mask logits, for Mask DINO's mask-enhanced box
    initialisation of the decoder queries.

    The box spans pixel edges (max index + 1, as detectron2's ``BitMasks.get_bounding_boxes``,
    Mask DINO's default 'bitmask' mode), so a mask filling the valid region gives (0.5, 0.5, 1, 1).
    An empty mask gives a zero box.

    Args:
        mask_logits: (B, Q, h, w) logits in the padded grid; pixels with logit > 0 count.
        valid_size: (B, 2) (h, w) of each image's unpadded region in mask pixels (img_shape / 4);
            None = the whole grid.

    Returns:
        (B, Q, 4) cxcywh normalised by the valid size, clamped to [0, 1]; no gradient.
    """
    bsz, num_queries, height, width = mask_logits.shape
    positive = mask_logits.detach().flatten(0, 1) > 0  # (B, Q, h, w) -> (B*Q, h, w)
    boxes = masks_to_boxes(positive)  # (B*Q, 4) xyxy with inclusive max indices, 0 if empty
    nonempty = positive.flatten(1).any(1, keepdim=True)  # (B*Q, 1)
    boxes = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0]) * nonempty
    boxes = box_convert(boxes, 'xyxy', 'cxcywh').view(bsz, num_queries, 4)
    if valid_size is None:
        valid_size = boxes.new_tensor([[height, width]]).expand(bsz, 2)
    scale = valid_size.to(boxes).flip(-1).repeat(1, 2)  # (B, 2) (h, w) -> (B, 4) (w, h, w, h)
    return (boxes / scale[:, None]).clamp(0.0, 1.0)
