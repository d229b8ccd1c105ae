"""Converters from official plain-ViT checkpoints to densevit names (pure ``state_dict ->
state_dict`` functions; load the result with ``densevit.checkpoint.loading.load_state_dict``,
which resizes ``pos_embed`` and ``rel_pos_h/w`` to the model).

- ``convert_timm_vit``: timm ``VisionTransformer`` (ViT, DeiT, MAE as timm names them) -> ``ViT``
  keys (no prefix unless ``prefix`` is given). The class / distillation / register tokens and their
  position-embedding entries, the classification head(s) and ``fc_norm`` are dropped; the final
  ``norm`` is kept (load into ``ViT(final_norm=True)``; a ViTDet-style ViT reports it unexpected).
- ``convert_mae``: the official MAE pretraining checkpoint (timm names plus a decoder): the
  decoder and mask token are dropped, the rest as ``convert_timm_vit``.
- ``convert_deit``: DeiT checkpoints (timm names, optionally distilled): as ``convert_timm_vit``.
- ``convert_sam``: segment-anything SAM (full model or image encoder only) -> ``ImageEncoder`` keys,
  ``backbone.*`` (ViT) and ``neck.*`` (SamNeck).
- ``convert_vitdet``: detectron2 ViTDet -> ``backbone.*`` (ViT) and ``neck.*``
  (SimpleFeaturePyramid); detector heads, proposal generator and pixel statistics are dropped.
"""
from __future__ import annotations

from functools import partial

import math
import re
from typing import Callable, Mapping

import torch

__all__ = ['convert_timm_vit', 'convert_mae', 'convert_deit', 'convert_sam', 'convert_vitdet',
           'CONVERTERS']

StateDict = Mapping[str, torch.Tensor]


def _unwrap(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file's dict ({'model': ...} / {'state_dict': ...} or bare),
    as tensors (detectron2 .pkl files hold numpy arrays)."""
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    return {k: torch.as_tensor(v) for k, v in state_dict.items() if not k.startswith('__')}


def _pos_embed_to_grid(pos_embed: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Token-list position embedding (1, [prefix +] N, C) -> (1, sqrt(N), sqrt(N), C) grid.

    The prefix (class / distillation / register token) entries are dropped when the list has
    them; a list that is already a square grid (timm ``no_embed_class``) is kept whole.
    """
    if pos_embed.ndim == 4:
        return pos_embed
    n = pos_embed.shape[1]
    for prefix in (num_prefix_tokens, 0):
        side = math.isqrt(n - prefix)
        if side * side == n - prefix:
            # (1, prefix + side*side, C) -> (1, side, side, C)
            return pos_embed[:, prefix:].reshape(1, side, side, pos_embed.shape[-1])
    raise ValueError(f'pos_embed with {n} tokens is neither a square grid nor '
                     f'{num_prefix_tokens} prefix tokens + a square grid')


def convert_timm_vit(state_dict: StateDict, *, prefix: str = '') -> dict[str, torch.Tensor]:
    """timm VisionTransformer -> densevit ``ViT`` (see the module docstring).

    Args:
        state_dict: a timm ``VisionTransformer`` state dict (or a checkpoint dict holding one
            under 'model' / 'state_dict').
        prefix: prepended to every output key (e.g. 'backbone.' for a task model).
    """
    sd = _unwrap(state_dict)
    num_prefix = int('cls_token' in sd) + int('dist_token' in sd)
    if 'reg_token' in sd:
        num_prefix += sd['reg_token'].shape[1]
    dropped = ('cls_token', 'dist_token', 'reg_token', 'head.', 'head_dist.', 'fc_norm.')
    out = {}
    for key, value in sd.items():
        if key.startswith(dropped):
            continue
        if key == 'pos_embed':
            value = _pos_embed_to_grid(value, num_prefix)
        out[prefix + key] = value
    return out


def convert_mae(state_dict: StateDict, *, prefix: str = '') -> dict[str, torch.Tensor]:
    """Official MAE checkpoint (pretraining with decoder, or fine-tuned) -> densevit ``ViT``."""
    sd = {k: v for k, v in _unwrap(state_dict).items()
          if not k.startswith(('decoder_', 'mask_token'))}
    return convert_timm_vit(sd, prefix=prefix)


def convert_deit(state_dict: StateDict, *, prefix: str = '') -> dict[str, torch.Tensor]:
    """Official DeiT checkpoint (timm names; distilled ones carry dist_token / head_dist)."""
    return convert_timm_vit(state_dict, prefix=prefix)


# SAM's neck is an nn.Sequential of conv, LayerNorm2d, conv, LayerNorm2d.
_SAM_NECK = {'0': 'conv1', '1': 'norm1', '2': 'conv2', '3': 'norm2'}


def convert_sam(state_dict: StateDict, *, keep_prompt_parts: bool = False
                ) -> dict[str, torch.Tensor]:
    """segment-anything SAM -> ``ImageEncoder(backbone=ViT, neck=SamNeck)`` keys.

    Args:
        state_dict: the full SAM model's state dict (``image_encoder.*``, ``prompt_encoder.*``,
            ``mask_decoder.*``) or an ``ImageEncoderViT``'s alone.
        keep_prompt_parts: keep ``prompt_encoder.*`` and ``mask_decoder.*`` under their own names
            (segment_anything's modules, used as they are); dropped by default.
    """
    sd = _unwrap(state_dict)
    if not any(k.startswith('image_encoder.') for k in sd):
        sd = {'image_encoder.' + k: v for k, v in sd.items()}
    out = {}
    for key, value in sd.items():
        if not key.startswith('image_encoder.'):
            if keep_prompt_parts and key.startswith(('prompt_encoder.', 'mask_decoder.')):
                out[key] = value
            continue
        key = key[len('image_encoder.'):]
        if key.startswith('neck.'):
            _, index, param = key.split('.', 2)
            out[f'neck.{_SAM_NECK[index]}.{param}'] = value
        else:
            key = key.replace('.mlp.lin1.', '.mlp.fc1.').replace('.mlp.lin2.', '.mlp.fc2.')
            out['backbone.' + key] = value
    return out


# detectron2 SimpleFeaturePyramid stage (log2 of the output stride) -> number of resampling
# layers before the 1x1 conv, for a stride-16 input (ViTDet): x4: deconv, LN, GELU, deconv;
# x2: deconv; x1: none; x0.5: max-pool.
_VITDET_RESAMPLE_LAYERS = {2: 4, 3: 1, 4: 0, 5: 1}
_SIMFP_KEY = re.compile(r'backbone\.simfp_(\d+)\.(\d+)\.(.+)')


def convert_vitdet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """detectron2 ViTDet (``backbone.net.*`` ViT, ``backbone.simfp_*`` pyramid) -> ``backbone.*``
    (``ViT``) and ``neck.*`` (``SimpleFeaturePyramid`` with stride-16 input).

    The class-token entry of ``pos_embed`` is dropped and the rest reshaped to its grid; keys
    outside the backbone (RPN, ROI heads, pixel mean / std) are dropped.
    """
    sd = _unwrap(state_dict)
    out = {}
    for key, value in sd.items():
        if key.startswith('backbone.net.'):
            name = key[len('backbone.net.'):]
            if name == 'pos_embed':
                value = _pos_embed_to_grid(value, num_prefix_tokens=1)
            out['backbone.' + name] = value
            continue
        match = _SIMFP_KEY.fullmatch(key)
        if match is None:
            continue
        stage, index, param = int(match[1]), int(match[2]), match[3]
        if stage not in _VITDET_RESAMPLE_LAYERS:
            raise ValueError(f'{key!r}: simfp stage {stage} (stride {2 ** stage}) is not one of '
                             f'ViTDet\'s stages {sorted(_VITDET_RESAMPLE_LAYERS)}')
        level = f's{2 ** stage}'
        num_resample = _VITDET_RESAMPLE_LAYERS[stage]
        if index < num_resample:
            out[f'neck.resample.{level}.{index}.{param}'] = value
            continue
        part = {num_resample: 'lateral', num_resample + 1: 'output'}.get(index)
        if part is None:
            raise ValueError(f'{key!r}: layer {index} of simfp_{stage} is beyond its two convs')
        # detectron2's Conv2d keeps its norm as a child: 'weight' / 'norm.weight' / 'norm.bias'
        param = param if param.startswith('norm.') else 'conv.' + param
        out[f'neck.{part}.{level}.{param}'] = value
    return out


CONVERTERS: dict[str, Callable[[StateDict], dict[str, torch.Tensor]]] = {
    'timm_vit': convert_timm_vit,
    'mae': convert_mae,
    'deit': convert_deit,
    # the whole model (PromptableSegmenter); convert_sam alone gives the image encoder's keys
    'sam': partial(convert_sam, keep_prompt_parts=True),
    'vitdet': convert_vitdet,
}
