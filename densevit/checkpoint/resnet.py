"""ResNet checkpoints in any of the usual namings -> the keys of ``TimmBackbone('resnet50')`` (a
pure ``state_dict -> state_dict`` function; load with ``densevit.checkpoint.load_state_dict``).

timm's ResNet has torchvision's names (``conv1``, ``bn1``, ``layer{i}.{b}.conv{k}`` / ``bn{k}`` /
``downsample.{0,1}``), which ``TimmBackbone`` keeps under timm's feature wrapper
(``model.model.*``). Read here:
- torchvision and timm (``resnet50-0676ba61.pth``, timm's ``resnet50.*`` weights): kept as they are;
- transformers' ``ResNetModel`` (``embedder.embedder.*``, ``encoder.stages.{s}.layers.{b}.*``);
- detectron2 (``stem.conv1`` (+ ``.norm``), ``res{n}.{b}.conv{k}`` (+ ``.norm``), ``shortcut``), as
  its ``ImageNetPretrained/torchvision/R-50.pkl`` and detrex's detectors hold it. detectron2's
  ResNet must be the torchvision-style one with the stride in the 3x3 conv (``STRIDE_IN_1X1:
  False``); the MSRA weights stride in the 1x1 conv, which the names do not tell.

The classifier (``fc``; ``stem.fc`` in detectron2's conversion of torchvision's file) is dropped.
Frozen-BN checkpoints have no ``num_batches_tracked``; a zero counter (what a fresh
``BatchNorm2d`` holds) is added for every BN. The renaming is shared with the DETR-family
converters (``densevit.checkpoint.detr``), whose detectors carry the same ResNets.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Optional

import torch

from .vit import _unwrap

__all__ = ['convert_resnet', 'rename_resnet', 'resnet_name', 'TIMM_PREFIX', 'CONVERTERS']

TIMM_PREFIX = 'model.model.'  # TimmBackbone holds timm's model under FeatureGetterNet

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
# (pattern, timm name) for the names that need no stage / block arithmetic; first full match wins
_DIRECT = [(re.compile(pattern), replacement) for pattern, replacement in (
    # timm / torchvision: kept as they are
    (rf'(conv1\.weight|bn1\.{_BN})', r'\1'),
    (rf'(layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.{_BN}|downsample\.0\.weight|'
     rf'downsample\.1\.{_BN}))', r'\1'),
    # transformers' ResNet (ResNetModel): the stem
    (r'embedder\.embedder\.convolution\.weight', 'conv1.weight'),
    (rf'embedder\.embedder\.normalization\.{_BN}', r'bn1.\1'),
    # detectron2: the stem
    (r'stem\.conv1\.weight', 'conv1.weight'),
    (rf'stem\.conv1\.norm\.{_BN}', r'bn1.\1'),
)]
_TRANSFORMERS_BLOCK = re.compile(rf'encoder\.stages\.(\d+)\.layers\.(\d+)\.(shortcut|layer\.(\d))\.'
                                 rf'(convolution\.weight|normalization\.{_BN})')
_DETECTRON2_BLOCK = re.compile(rf'res([2-5])\.(\d+)\.(conv[1-3]|shortcut)\.(weight|norm\.{_BN})')
_CLASSIFIER = re.compile(r'(stem\.)?fc\.(weight|bias)')


def resnet_name(name: str) -> Optional[str]:
    """A ResNet parameter name in torchvision / timm, transformers or detectron2 naming ->
    timm's name, or None if it is none of them."""
    for pattern, replacement in _DIRECT:
        match = pattern.fullmatch(name)
        if match:
            return match.expand(replacement)
    # transformers' ResNet: stage s is timm's layer{s+1}; layer.{i} is conv{i+1} / bn{i+1}
    match = _TRANSFORMERS_BLOCK.fullmatch(name)
    if match:
        stage, block, part, index, param = match[1], match[2], match[3], match[4], match[5]
        conv = param.startswith('convolution')
        suffix = 'weight' if conv else param.split('.', 1)[1]
        if part == 'shortcut':
            module = 'downsample.0' if conv else 'downsample.1'
        else:
            module = f'conv{int(index) + 1}' if conv else f'bn{int(index) + 1}'
        return f'layer{int(stage) + 1}.{block}.{module}.{suffix}'
    # detectron2: res{n} is timm's layer{n-1}; a conv's norm is its child
    match = _DETECTRON2_BLOCK.fullmatch(name)
    if match:
        stage, block, conv, param = int(match[1]) - 1, match[2], match[3], match[4]
        if conv == 'shortcut':
            module = 'downsample.0' if param == 'weight' else 'downsample.1'
        else:
            module = conv if param == 'weight' else 'bn' + conv[-1]
        suffix = 'weight' if param == 'weight' else param.split('.', 1)[1]
        return f'layer{stage}.{block}.{module}.{suffix}'
    return None


def rename_resnet(weights: Mapping[str, torch.Tensor], *, prefix: str, layout: str
                  ) -> dict[str, torch.Tensor]:
    """A ResNet's tensors (keys relative to the ResNet) -> ``prefix`` + timm keys, with a zero
    ``num_batches_tracked`` for every BN that lacks one.

    Args:
        weights: the ResNet's parameters and buffers, classifier already removed.
        prefix: prepended to every timm name (``'model.model.'`` for a ``TimmBackbone``,
            ``'backbone.model.model.'`` for a detector holding one).
        layout: the checkpoint's name for error messages (``"detrex's DINO"``).

    Raises:
        ValueError: a key is not a ResNet parameter in any of the three namings.
    """
    out, unknown = {}, []
    for name, value in weights.items():
        new = resnet_name(name)
        if new is None:
            unknown.append(name)
        else:
            out[prefix + new] = value
    if unknown:
        raise ValueError(f'{layout}: backbone keys {unknown[:5]} ({len(unknown)} in all) are not '
                         'ResNet parameters in torchvision / timm, transformers or detectron2 '
                         'names; only ResNet backbones are converted')
    for key in [k for k in out if k.endswith('.running_mean')]:
        counter = key[:-len('running_mean')] + 'num_batches_tracked'
        out.setdefault(counter, torch.zeros((), dtype=torch.long))
    return out


def convert_resnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageNet ResNet checkpoint (torchvision, timm, transformers' ResNetModel or detectron2) ->
    ``TimmBackbone`` keys ``model.model.*`` (see the module docstring).

    Args:
        state_dict: the checkpoint's tensors, or the checkpoint dict holding them under
            ``'model'`` / ``'state_dict'`` (detectron2's ``.pkl`` files: numpy arrays).
    """
    weights = {k: v for k, v in _unwrap(state_dict).items() if not _CLASSIFIER.fullmatch(k)}
    return rename_resnet(weights, prefix=TIMM_PREFIX, layout='ResNet checkpoint')


CONVERTERS: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    'resnet': convert_resnet,
}
