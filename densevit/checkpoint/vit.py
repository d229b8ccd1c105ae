"""Converters from official plain-ViT checkpoints to densevit names (pure ``state_dict ->
state_dict`` functions; load the result with ``densevit.checkpoint.loading.load_state_dict``,
which resizes ``pos_embed`` and ``rel_pos_h/w`` to the model).

- ``convert_timm_vit``: timm ``VisionTransformer`` (ViT, DeiT, DeiT-III, DINOv2, MAE as timm names
  them) -> ``ViT`` keys (no prefix unless ``prefix`` is given). The class / distillation / register
  tokens and their position-embedding entries, the classification head(s) and ``fc_norm`` are
  dropped; the final ``norm`` is kept (``ViT(final_norm=True)`` loads it, a ViTDet-style ViT
  ignores it); LayerScale ``ls1`` / ``ls2`` is kept (``ViT(layer_scale=...)``). Any other key
  (q / k norms, EVA's q / v biases and SwiGLU, CLIP's pre-norm, ...) has no place in ``ViT``: the
  file is refused, naming the keys.
- ``convert_mae``: the official MAE pretraining checkpoint (timm names plus a decoder): the
  decoder and mask token are dropped, the rest as ``convert_timm_vit``.
- ``convert_deit``: DeiT checkpoints (timm names, optionally distilled): as ``convert_timm_vit``.
- ``convert_sam``: segment-anything SAM (full model or image encoder only) -> ``ImageEncoder`` keys,
  ``backbone.*`` (ViT) and ``neck.*`` (SamNeck).
- ``convert_vitdet``: detectron2 ViTDet -> ``backbone.*`` (ViT) and ``neck.*``
  (SimpleFeaturePyramid); detector heads, proposal generator and pixel statistics are dropped.
- ``convert_segmenter``: the official Segmenter (rstrudel/segmenter, ``{'model': ...}`` with
  ``encoder.*`` and ``decoder.*``) -> ``backbone.*`` (``ViT(class_token=True)``) and
  ``decode_head.*`` (``SegmenterLinearHead`` / ``SegmenterMaskHead``, whose names are the official
  decoders'); a timm ViT (the AugReg / DeiT weights Segmenter starts from) -> ``ViT`` keys with the
  class (and distillation) token kept.
"""
from __future__ import annotations

from functools import partial

import math
import re
from typing import Callable, Mapping

import torch

__all__ = ['convert_timm_vit', 'convert_mae', 'convert_deit', 'convert_sam', 'convert_vitdet',
           'convert_segmenter', 'CONVERTERS']

StateDict = Mapping[str, torch.Tensor]


def _unwrap(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file's dict ({'model': ...} / {'state_dict': ...} or bare),
    as tensors (detectron2 .pkl files hold numpy arrays)."""
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    return {k: torch.as_tensor(v) for k, v in state_dict.items() if not k.startswith('__')}


def _pos_embed_to_grid(pos_embed: torch.Tensor, num_prefix_tokens: int
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-list position embedding (1, [prefix +] N, C) -> (1, sqrt(N), sqrt(N), C) grid and
    the prefix (class / distillation / register token) entries (1, P, C), or None when the list
    has none (timm ``no_embed_class``: the prefix tokens get no position embedding)."""
    if pos_embed.ndim == 4:
        return pos_embed, None
    n = pos_embed.shape[1]
    for prefix in (num_prefix_tokens, 0):
        side = math.isqrt(n - prefix)
        if side * side == n - prefix:
            # (1, prefix + side*side, C) -> (1, side, side, C)
            grid = pos_embed[:, prefix:].reshape(1, side, side, pos_embed.shape[-1])
            return grid, (pos_embed[:, :prefix] if prefix else None)
    raise ValueError(f'pos_embed with {n} tokens is neither a square grid nor '
                     f'{num_prefix_tokens} prefix tokens + a square grid')


# The keys of a timm VisionTransformer that densevit's ViT holds (LayerScale included) ...
_TIMM_VIT_KEY = re.compile(
    r'patch_embed\.proj\.(weight|bias)|pos_embed|norm\.(weight|bias)|'
    r'blocks\.\d+\.((norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)|'
    r'ls[12]\.gamma)')
# ... the ones it drops (tokens are handled apart), and what the others usually are
_TIMM_VIT_DROPPED = ('head.', 'head_dist.', 'fc_norm.', 'attn_pool.')
_NO_PLACE_HINTS = (('q_norm', 'q / k norm (qk_norm=True models)'),
                   ('q_bias', 'separate q / v biases (EVA, BEiT)'),
                   ('norm_pre', 'a pre-norm (CLIP)'), ('rope', 'rotary embeddings (EVA)'),
                   ('mlp.norm', 'a sub-LN MLP (EVA)'), ('fc1_g', 'a SwiGLU MLP (EVA)'))


def _refuse_unknown(keys: list[str], converter: str) -> None:
    if not keys:
        return
    hints = sorted({hint for part, hint in _NO_PLACE_HINTS for key in keys if part in key})
    raise ValueError(
        f'{converter}: {len(keys)} checkpoint keys have no place in densevit ViT (first: '
        f'{", ".join(keys[:4])})' + (f'; the file has {", ".join(hints)}' if hints else '') +
        '. densevit ViT holds patch_embed.proj, pos_embed, blocks.<i>.{norm1, attn.qkv, '
        'attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2}, norm (plus class tokens)')


def convert_timm_vit(state_dict: StateDict, *, prefix: str = '',
                     keep_class_token: bool = False) -> dict[str, torch.Tensor]:
    """timm VisionTransformer -> densevit ``ViT`` (see the module docstring).

    Args:
        state_dict: a timm ``VisionTransformer`` state dict (or a checkpoint dict holding one
            under 'model' / 'state_dict').
        prefix: prepended to every output key (e.g. 'backbone.' for a task model).
        keep_class_token: keep ``cls_token`` (and ``dist_token``) and their position entries as
            ``cls_pos_embed``, for ``ViT(class_token=True)`` (Segmenter); a file without position
            entries for them (timm ``no_embed_class``) gets zeros there, which is the same model.

    Raises:
        ValueError: a key has no place in ``ViT`` (named), or ``keep_class_token`` and the file has
            register tokens.
    """
    sd = _unwrap(state_dict)
    num_prefix = int('cls_token' in sd) + int('dist_token' in sd)
    if 'reg_token' in sd:
        if keep_class_token:
            raise ValueError('convert_timm_vit: the checkpoint has register tokens (reg_token), '
                             'which ViT(class_token=True) has no place for')
        num_prefix += sd['reg_token'].shape[1]
    unknown = [k for k in sd if k not in ('cls_token', 'dist_token', 'reg_token')
               and not k.startswith(_TIMM_VIT_DROPPED) and not _TIMM_VIT_KEY.fullmatch(k)]
    _refuse_unknown(unknown, 'convert_timm_vit')
    out = {}
    for key, value in sd.items():
        if key in ('cls_token', 'dist_token'):
            if keep_class_token:
                out[prefix + key] = value
            continue
        if key == 'reg_token' or key.startswith(_TIMM_VIT_DROPPED):
            continue
        if key == 'pos_embed':
            value, prefix_pos = _pos_embed_to_grid(value, num_prefix)
            if keep_class_token and num_prefix:
                out[prefix + 'cls_pos_embed'] = (prefix_pos if prefix_pos is not None else
                                                 value.new_zeros(1, num_prefix, value.shape[-1]))
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
                value = _pos_embed_to_grid(value, num_prefix_tokens=1)[0]
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


def convert_segmenter(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Official Segmenter checkpoint, or the timm ViT it starts from -> densevit keys.

    The official layout (``segm/model/segmenter.py``: ``encoder`` = its ``VisionTransformer``,
    timm's names plus ``head``; ``decoder`` = ``DecoderLinear`` (``head``) or ``MaskTransformer``
    (``proj_dec``, ``blocks``, ``cls_emb``, ``proj_patch``, ``proj_classes``, ``decoder_norm``,
    ``mask_norm``)) becomes ``backbone.*`` for ``ViT(class_token=True, final_norm=True)`` (the
    encoder's classifier dropped) and ``decode_head.*`` under the same names, which
    ``SegmenterLinearHead`` / ``SegmenterMaskHead`` use (with ``input_norm=False``). A timm
    ViT file (no ``encoder.`` keys) converts as ``convert_timm_vit(keep_class_token=True)``.
    """
    sd = _unwrap(state_dict)
    if not any(k.startswith('encoder.') for k in sd):
        return convert_timm_vit(sd, keep_class_token=True)
    other = [k for k in sd if not k.startswith(('encoder.', 'decoder.'))]
    if other:
        raise ValueError(f'convert_segmenter: keys outside encoder.* / decoder.* (first: '
                         f'{other[:4]}); expected the official Segmenter layout')
    encoder = {k[len('encoder.'):]: v for k, v in sd.items() if k.startswith('encoder.')}
    out = convert_timm_vit(encoder, prefix='backbone.', keep_class_token=True)
    out.update({'decode_head.' + k[len('decoder.'):]: v for k, v in sd.items()
                if k.startswith('decoder.')})
    return out


CONVERTERS: dict[str, Callable[[StateDict], dict[str, torch.Tensor]]] = {
    'timm_vit': convert_timm_vit,
    'mae': convert_mae,
    'deit': convert_deit,
    # the whole model (PromptableSegmenter); convert_sam alone gives the image encoder's keys
    'sam': partial(convert_sam, keep_prompt_parts=True),
    'vitdet': convert_vitdet,
    'segmenter': convert_segmenter,
}
