"""Segmenter decoders (Strudel et al., ICCV 2021): a linear layer on patch tokens, or a mask
transformer that decodes patch tokens together with learned class embeddings and scores every
patch against every class by cosine similarity.

Both consume one feature map (a plain ViT's 's16', or any level of a hierarchical backbone), treat
its pixels as tokens and return logits at that map's stride. The official encoder applies its final
LayerNorm to the tokens before decoding; densevit backbones return un-normalised maps, so both
heads start with a LayerNorm over channels (``input_norm=True``) to match.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn

from ...registry import MODELS
from ..contract import FeatureSpec
from ..losses import SegCriterion
from .base import SegHead, select_inputs

__all__ = ['SegmenterLinearHead', 'SegmenterMaskHead']

# Segmenter's init (timm's ViT init): truncated-normal (std 0.02) linear weights, zero biases.
_init_linear = partial(init_weights_vit_timm, needs_reset=False)


def _one_input(input_shapes: Mapping[str, FeatureSpec], in_features: Sequence[str],
               owner: str) -> FeatureSpec:
    if len(in_features) != 1:
        raise ValueError(f'{owner} consumes one feature map; got in_features='
                         f'{tuple(in_features)} (e.g. in_features=("s16",))')
    return select_inputs(input_shapes, in_features, owner)[0]



class _SegmenterHeadBase(SegHead):
    """Both decoders read one map as a token list."""

    in_features: tuple[str, ...]

    def _tokens(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        x = features[self.in_features[0]]
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), h, w  # (B, C, h, w) -> (B, h*w, C)


@MODELS.register_module()
class SegmenterLinearHead(_SegmenterHeadBase):
    """Segmenter's linear decoder: (LayerNorm and) one linear layer from tokens to class logits.

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head.
        in_features: a one-name tuple, e.g. ('s16',).
        num_classes: K.
        input_norm: LayerNorm the tokens first (the official encoder's final norm; set False if
            the backbone already normalises its output).
        dropout_ratio: dropout on the tokens before the linear layer (the official decoder has
            none, hence 0.0).
        loss_decode: loss config(s) built with MODELS.
        sampler: optional pixel sampler config.
        ignore_index: label ignored by accuracy and sampler.
        align_corners: for the bilinear resizes.
    """

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s16',), num_classes: int,
                 input_norm: bool = True, dropout_ratio: float = 0.0,
                 loss_decode: dict | list[dict] = dict(type='CrossEntropyLoss'),
                 sampler: dict | None = None, ignore_index: int = 255,
                 align_corners: bool = False) -> None:
        super().__init__()
        spec = _one_input(input_shapes, in_features, type(self).__name__)
        self.in_features = tuple(in_features)
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.norm = nn.LayerNorm(spec.channels) if input_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.head = nn.Linear(spec.channels, num_classes)
        self.criterion = SegCriterion(loss_decode=loss_decode, sampler=sampler,
                                      ignore_index=ignore_index, align_corners=align_corners)
        self.apply(_init_linear)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tokens, h, w = self._tokens(features)
        logits = self.head(self.dropout(self.norm(tokens)))  # (B, h*w, K)
        return logits.transpose(1, 2).reshape(logits.shape[0], -1, h, w)  # -> (B, K, h, w)


@MODELS.register_module()
class SegmenterMaskHead(_SegmenterHeadBase):
    """Segmenter's mask transformer.

    Tokens are projected to ``channels`` (d_model), K learned class embeddings are appended, and
    ``num_layers`` pre-norm transformer blocks decode them jointly; after a LayerNorm the patch and
    class outputs are projected (``proj_patch``, ``proj_classes``), L2-normalised, and
    masks = patches @ classes^T (cosine similarities), followed by a LayerNorm over the K classes
    (``mask_norm``).

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head.
        in_features: a one-name tuple, e.g. ('s16',).
        num_classes: K.
        channels: d_model; None = the input channels (as official).
        num_heads: attention heads; None = channels // 64 (as official).
        num_layers: transformer blocks (official: 2).
        mlp_ratio: MLP hidden size / d_model (official: 4).
        dropout_ratio: dropout in attention and MLP (official: 0.1).
        drop_path_rate: stochastic depth, linearly increasing to this over the blocks
            (official: 0.0).
        input_norm: LayerNorm the tokens first (see the module docstring).
        loss_decode: loss config(s) built with MODELS.
        sampler: optional pixel sampler config.
        ignore_index: label ignored by accuracy and sampler.
        align_corners: for the bilinear resizes.
    """

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s16',), num_classes: int,
                 channels: int | None = None, num_heads: int | None = None, num_layers: int = 2,
                 mlp_ratio: float = 4.0, dropout_ratio: float = 0.1, drop_path_rate: float = 0.0,
                 input_norm: bool = True,
                 loss_decode: dict | list[dict] = dict(type='CrossEntropyLoss'),
                 sampler: dict | None = None, ignore_index: int = 255,
                 align_corners: bool = False) -> None:
        super().__init__()
        spec = _one_input(input_shapes, in_features, type(self).__name__)
        d_model = spec.channels if channels is None else channels
        num_heads = max(d_model // 64, 1) if num_heads is None else num_heads
        if d_model % num_heads:
            raise ValueError(f'SegmenterMaskHead channels={d_model} is not divisible by '
                             f'num_heads={num_heads}')
        self.in_features = tuple(in_features)
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.input_norm = nn.LayerNorm(spec.channels) if input_norm else nn.Identity()
        self.proj_dec = nn.Linear(spec.channels, d_model)
        dpr = torch.linspace(0, drop_path_rate, num_layers).tolist()
        self.blocks = nn.ModuleList(
            Block(d_model, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout_ratio,
                  attn_drop=dropout_ratio, drop_path=dpr[i], norm_layer=nn.LayerNorm)
            for i in range(num_layers))
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, d_model))
        scale = d_model ** -0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.mask_norm = nn.LayerNorm(num_classes)
        self.criterion = SegCriterion(loss_decode=loss_decode, sampler=sampler,
                                      ignore_index=ignore_index, align_corners=align_corners)
        self.apply(_init_linear)
        trunc_normal_(self.cls_emb, std=0.02)

    def cosine_masks(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Patch-class cosine similarities before ``mask_norm``, (B, h*w, K)."""
        tokens, _, _ = self._tokens(features)
        x = self.proj_dec(self.input_norm(tokens))  # (B, N, d)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)  # (B, N + K, d)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :-self.num_classes] @ self.proj_patch, dim=-1)  # (B, N, d)
        classes = F.normalize(x[:, -self.num_classes:] @ self.proj_classes, dim=-1)  # (B, K, d)
        return patches @ classes.transpose(1, 2)  # (B, N, K)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h, w = features[self.in_features[0]].shape[-2:]
        masks = self.mask_norm(self.cosine_masks(features))  # (B, h*w, K)
        return masks.transpose(1, 2).reshape(masks.shape[0], -1, h, w)  # -> (B, K, h, w)
