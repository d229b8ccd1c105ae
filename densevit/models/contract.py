"""The feature contract that lets any backbone feed any neck and head.

A backbone's ``forward(images)`` takes a (B, 3, H, W) batch and returns a dict of named feature
maps, each (B, C, H / stride, W / stride), rounded up where the input does not divide. Necks that
upsample (SimpleFeaturePyramid) derive their finer maps from a coarser one, so their sizes are
ceil(H / stride) only when H divides by the coarsest stride; the data preprocessors pad batches to
such a multiple (``size_divisor``), as ViTDet and mmdetection do. It
declares them up front in ``out_features``: name -> ``FeatureSpec(channels, stride)``. Names follow
the stride, ``'s4'``, ``'s8'``, ``'s16'``, ``'s32'``, ``'s64'``, so a head that consumes
``('s4', 's8', 's16', 's32')`` works on any backbone or neck that produces them.

A neck is built with the ``input_shapes`` of what feeds it (the backbone's ``out_features``), takes
that dict and returns another, declared in its own ``out_features``. A head is built with the
``input_shapes`` of what feeds it and names the features it consumes (``in_features``).
Nothing else couples them: the task models pass ``input_shapes`` when they build a neck or head.

A backbone loaded from a pretrained checkpoint (``backbone_checkpoint``) must take the file
completely; it names the two differences it accepts: ``checkpoint_optional_keys()`` (parts the
dense backbone adds to the pretrained network, which start from their initialisation) and
``checkpoint_ignored_keys()`` (parts of the pretrained network it drops by design).

For layer-wise lr decay a backbone reports ``num_layers`` and ``layer_id(param_name)``: 0 for the
stem (patch embedding, position embedding), 1..num_layers for its blocks; parameters outside the
backbone (neck, heads) count as num_layers + 1 and are not decayed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

__all__ = ['FeatureSpec', 'Backbone', 'check_features']


@dataclass(frozen=True)
class FeatureSpec:
    """The shape of one named feature map: channels and stride relative to the input image."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base for densevit backbones: subclasses set ``out_features`` and ``num_layers`` and
    implement ``forward`` and ``layer_id``."""

    out_features: dict[str, FeatureSpec]
    num_layers: int

    def layer_id(self, param_name: str) -> int:
        """Layer index of a parameter (name relative to this module) for lr decay."""
        raise NotImplementedError(f'{type(self).__name__} does not define layer_id')

    def no_weight_decay(self) -> set[str]:
        """Names of parameters, besides norms and biases, that take no weight decay."""
        return set()

    def checkpoint_optional_keys(self) -> set[str]:
        """State-dict keys a pretrained (classification) checkpoint may lack: parts the dense
        backbone adds to the pretrained network, e.g. per-level output norms, which then start
        from their initialisation."""
        return set()

    def checkpoint_ignored_keys(self) -> set[str]:
        """Checkpoint keys this backbone drops by design, e.g. the final ``norm`` of a
        pretraining checkpoint for a ViT built without one (as ViTDet drops MAE's)."""
        return set()


def check_features(features: Mapping[str, torch.Tensor], specs: Mapping[str, FeatureSpec],
                   image_size: tuple[int, int], owner: str = 'module') -> None:
    """Raise if ``features`` do not match the declared ``specs`` for an input of ``image_size``.

    Used by the contract tests; the expected spatial size of a stride-s map is ceil(H / s).
    """
    if set(features) != set(specs):
        raise AssertionError(f'{owner} returned features {sorted(features)}, '
                             f'declared {sorted(specs)}')
    h, w = image_size
    for name, spec in specs.items():
        feat = features[name]
        expected = (spec.channels, -(-h // spec.stride), -(-w // spec.stride))
        if tuple(feat.shape[1:]) != expected:
            raise AssertionError(f'{owner} feature {name!r} has shape {tuple(feat.shape)}, '
                                 f'declared (B, {expected[0]}, {expected[1]}, {expected[2]})')
