"""Converter from the official NAT / DiNAT checkpoints (SHI-Labs) to densevit's NAT / DiNAT.

densevit's backbone keeps the official parameter names (``patch_embed.proj.0.weight``,
``levels.0.blocks.0.attn.qkv.weight``, ``levels.0.blocks.0.attn.rpb``,
``levels.0.downsample.reduction.weight``, ``norm0.weight``), so converting only means unwrapping,
taking the backbone out of a dense (mmdet / mmseg) checkpoint, and dropping the classifier.
"""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ['convert_nat', 'CONVERTERS']

_WRAPPERS = ('model', 'state_dict')
_CLASSIFIER = ('head.weight', 'head.bias', 'norm.weight', 'norm.bias')


def convert_nat(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official NAT / DiNAT checkpoint -> densevit ``NAT`` / ``DiNAT`` state dict.

    Accepts the classification checkpoints (optionally under a ``model`` or ``state_dict`` key;
    the 1000-class ``head`` and the final ``norm`` are dropped, which the dense backbone replaces
    with per-output norms ``norm0``..``norm3``) and the dense-prediction checkpoints (keys under
    ``backbone.``, whose neck and head keys are dropped; their ``norm<i>`` output norms are kept).
    """
    while True:
        wrapper = next((k for k in _WRAPPERS if isinstance(state_dict.get(k), Mapping)), None)
        if wrapper is None:
            break
        state_dict = state_dict[wrapper]
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items()
                      if k.startswith('backbone.')}
    if not any(k.startswith('patch_embed.') for k in state_dict):
        raise ValueError('convert_nat: no patch_embed.* key, this is not a NAT/DiNAT checkpoint '
                         f'(first keys: {list(state_dict)[:5]})')
    return {k: v for k, v in state_dict.items() if k not in _CLASSIFIER}


CONVERTERS = {'nat': convert_nat, 'dinat': convert_nat}
