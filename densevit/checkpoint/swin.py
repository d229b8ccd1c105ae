"""Swin Transformer v1 checkpoints (official Microsoft or timm) -> densevit ``Swin`` keys.

densevit's Swin keeps timm's parameter names, so a timm checkpoint only loses its classifier. The
official layout (microsoft/Swin-Transformer) differs in three ways:

- the patch merging of stage i sits at the END of stage i (``layers.i.downsample``, i = 0..2),
  where timm puts it at the START of the next stage (``layers.{i+1}.downsample``);
- the relative position index and the shift masks are saved as buffers
  (``attn.relative_position_index``, ``attn_mask``); densevit rebuilds them, so they are dropped;
- the classifier is ``head.*`` (timm: ``head.fc.*``).

Both layouts end in a classification ``norm`` over the last stage and a ``head``; the dense Swin
has one norm per output level instead, so both are dropped and the output norms start fresh.

timm's ``swin_transformer.checkpoint_filter_fn`` does the same renaming but needs a built model,
because it also resizes the patch embedding and bias tables to that model. A converter here is a
pure ``state_dict -> state_dict`` function; the resizing happens when the result is loaded
(``densevit.checkpoint.loading.load_state_dict`` resizes ``relative_position_bias_table`` by name).
The tests check that this converter gives the same tensors under the same names as timm's filter.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

__all__ = ['convert_swin', 'CONVERTERS']

_BUFFERS = ('relative_position_index', 'attn_mask')
_CLASSIFIER = ('head.', 'norm.')


def _unwrap(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The tensors of a checkpoint saved as ``{'model': ...}`` (official) or
    ``{'state_dict': ...}``."""
    for wrapper in ('model', 'state_dict'):
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return state_dict


def convert_swin(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official or timm Swin v1 checkpoint -> keys of ``densevit.models.backbones.Swin``.

    Args:
        state_dict: a checkpoint's tensors, or the checkpoint with them under ``'model'`` or
            ``'state_dict'``.

    Returns:
        A new dict without buffers, classifier and classification norm, the official patch-merging
        layers moved to the stage they feed.

    Raises:
        ValueError: the checkpoint has an absolute position embedding (``ape=True`` models), which
            densevit's Swin does not have.
    """
    state_dict = _unwrap(state_dict)
    if any(key.endswith('absolute_pos_embed') for key in state_dict):
        raise ValueError('Swin checkpoint has absolute_pos_embed (trained with ape=True); '
                         'densevit Swin has relative position bias only, expected no such key')
    # official checkpoints have a patch merging after stage 0; timm's stage 0 has none
    official = 'layers.0.downsample.reduction.weight' in state_dict
    out = {}
    for key, value in state_dict.items():
        if key.rsplit('.', 1)[-1] in _BUFFERS or key.startswith(_CLASSIFIER):
            continue
        if official:
            key = re.sub(r'^layers\.(\d+)\.downsample\.',
                         lambda m: f'layers.{int(m.group(1)) + 1}.downsample.', key)
        out[key] = value
    return out


CONVERTERS: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    'swin': convert_swin,
}
