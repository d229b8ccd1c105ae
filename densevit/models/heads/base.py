"""What every semantic-segmentation head shares: checking ``in_features`` against the
``input_shapes`` that feed it, the norm layer named in a config, and the loss / predict half of
the head contract."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import SyncBatchNorm
from ..contract import FeatureSpec
from ..losses import SegCriterion

__all__ = ['SegHead', 'select_inputs', 'norm_layer_type', 'NORM_LAYERS']

# Config names of the heads' 2-d norm layers (mmseg's norm_cfg types). 'SyncBN' shares batch
# statistics across the processes of a distributed run and is plain BatchNorm on one process.
NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {'BN': nn.BatchNorm2d, 'SyncBN': SyncBatchNorm}


def norm_layer_type(norm_layer: str | Callable[..., nn.Module],
                    owner: str) -> Callable[..., nn.Module]:
    """The norm layer type for ``norm_layer``: a name from ``NORM_LAYERS`` or a callable.

    Args:
        norm_layer: 'BN', 'SyncBN', or a callable taking the channel count.
        owner: the head's class name, for the error message.
    """
    if callable(norm_layer):
        return norm_layer
    if norm_layer not in NORM_LAYERS:
        raise ValueError(f'{owner}: norm_layer {norm_layer!r} is unknown; use one of '
                         f'{sorted(NORM_LAYERS)} or a norm layer type')
    return NORM_LAYERS[norm_layer]


def select_inputs(input_shapes: Mapping[str, FeatureSpec], in_features: Sequence[str],
                  owner: str) -> list[FeatureSpec]:
    """The specs of ``in_features`` in order; raises naming what is available if one is missing.

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head (backbone or neck outputs).
        in_features: the names the head consumes.
        owner: the head's class name, for the error message.
    """
    if not in_features:
        raise ValueError(f'{owner}: in_features is empty; name at least one of '
                         f'{sorted(input_shapes)}')
    missing = [name for name in in_features if name not in input_shapes]
    if missing:
        raise KeyError(f'{owner}: in_features {missing} are not produced by what feeds it; '
                       f'available: {sorted(input_shapes)}')
    return [input_shapes[name] for name in in_features]


class SegHead(nn.Module):
    """Base of the segmentation heads: subclasses build ``self.criterion`` (a SegCriterion), set
    ``self.align_corners`` and implement ``forward(features) -> logits (B, K, h, w)``."""

    criterion: SegCriterion
    align_corners: bool

    def loss(self, features: Mapping[str, torch.Tensor], data_samples: Sequence) -> dict:
        """Losses (and 'acc_seg') of the logits against the samples' ``gt_sem_seg``."""
        return self.criterion(self.forward(features), data_samples)

    def predict(self, features: Mapping[str, torch.Tensor],
                out_size: tuple[int, int]) -> torch.Tensor:
        """Logits resized bilinearly to ``out_size`` (the padded input size)."""
        return F.interpolate(self.forward(features), size=tuple(out_size), mode='bilinear',
                             align_corners=self.align_corners)
