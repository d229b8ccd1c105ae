"""One neck, or a chain of them, between a backbone and a head.

A task model's ``neck`` config may be one neck or a list applied in turn, each built with the
``out_features`` of the one before (detrex's ViTDet DINO: simple feature pyramid, then a channel
mapper; SAM prompting on Swin: the s16 map projected by ``SamNeck``). One neck keeps its weights
under ``neck.*``, a chain under ``neck.0.*``, ``neck.1.*``, ...
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ...registry import MODELS
from ..contract import FeatureSpec

__all__ = ['build_neck', 'apply_neck']


def build_neck(cfg: Mapping | Sequence[Mapping] | None, input_shapes: Mapping[str, FeatureSpec]
               ) -> tuple[nn.Module | None, dict[str, FeatureSpec], list[int]]:
    """Build ``cfg`` (None, a neck config or a list of them) on maps of ``input_shapes``.

    Returns:
        (the neck: a module, an ``nn.ModuleList`` for a list, or None; the maps it gives out;
        the strides of every map along the way, the backbone's included).
    """
    shapes = dict(input_shapes)
    strides = [spec.stride for spec in shapes.values()]
    if cfg is None:
        return None, shapes, strides
    necks = []
    for neck_cfg in ([cfg] if isinstance(cfg, Mapping) else cfg):
        necks.append(MODELS.build(neck_cfg, default_args=dict(input_shapes=shapes)))
        shapes = dict(necks[-1].out_features)
        strides += [spec.stride for spec in shapes.values()]
    neck = necks[0] if isinstance(cfg, Mapping) else nn.ModuleList(necks)
    return neck, shapes, strides


def apply_neck(neck: nn.Module | None, features: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """Run the features through ``neck`` as :func:`build_neck` made it."""
    for module in ([] if neck is None else neck if isinstance(neck, nn.ModuleList) else [neck]):
        features = module(features)
    return features
