"""transformers' ``UperNetForSemanticSegmentation`` checkpoints -> the whole-model keys of
densevit's ``Segmentor(backbone=..., decode_head=UPerHead, auxiliary_head=FCNHead)`` (a pure
``state_dict -> state_dict`` function; load with ``densevit.checkpoint.load_state_dict``).

The Hub's ``openmmlab/upernet-swin-*`` and ``openmmlab/upernet-convnext-*`` weights were converted
by transformers from mmsegmentation's UperNet models, so after this converter a densevit
Segmentor with the matching backbone computes what mmsegmentation computed. The backbone kind is
read from the keys (``encoder.stages.*``: ConvNeXt; ``encoder.layers.*``: Swin).

Swin (build the Segmentor from ``configs/upernet/upernet_swin-{t,b}_*.py``, arch and
``window_size`` as the checkpoint's ``SwinConfig``). Both namings of transformers' Swin are read:

- as saved on the Hub (``backbone.embeddings.*``, ``backbone.encoder.layers.{i}.blocks.{j}.``
  ``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``,
  ``output.dense``), which ``save_pretrained`` still writes;
- as transformers >= 5 names it in memory (``backbone.swin.*``, ``attention.{q,k,v,o}_proj``,
  ``attention.relative_position_bias.relative_position_bias_table``, ``mlp.fc1`` / ``fc2``).

The Swin is renamed to the official Microsoft layout (``patch_embed``,
``layers.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, the patch merging at
the end of stage i) and then goes through ``densevit.checkpoint.swin.convert_swin``, which moves
the patch merging to the stage it feeds and drops the buffers and the classification norm
(``swin.layernorm``, unused by the backbone). The separate query / key / value projections are
packed into ``qkv`` (q, k, v rows). ``hidden_states_norms.stage{k}`` become the output norms
``out_norms.s{stride}``.

ConvNeXt (build the backbone as ``dict(type='TimmBackbone', model_name='convnext_tiny',
out_norm='LN2d', pad_input=False)``, the timm model whose ``depths`` / ``dims`` are the
checkpoint's ``ConvNextConfig`` ``depths`` / ``hidden_sizes``): transformers' names map one to
one onto timm's ConvNeXt under ``backbone.model.model.`` (``embeddings.patch_embeddings`` /
``layernorm`` -> ``stem.0`` / ``stem.1``, ``encoder.stages.{i}.downsampling_layer.{0,1}`` ->
``stages.{i}.downsample.{0,1}``, ``layers.{j}.{dwconv,layernorm,pwconv1,pwconv2,``
``layer_scale_parameter}`` -> ``blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``), and
``hidden_states_norms.stage{k}`` become TimmBackbone's ``out_norms.s{stride}``. ``pad_input=False``
matters at sizes 32 does not divide: transformers and mmseg run ConvNeXt on the unpadded image
(floor-sized maps).

Heads, for either backbone:
- ``decode_head.*`` (``UPerHead``): ``psp_modules.{i}.1`` -> ``ppm.branches.{i}.1``,
  ``bottleneck`` -> ``ppm.bottleneck``, ``lateral_convs`` / ``fpn_convs`` / ``fpn_bottleneck``
  keep their names, ``classifier`` -> ``conv_seg``. A ConvModule's ``conv`` / ``batch_norm``
  are the ``0`` / ``1`` of torchvision's ``Conv2dNormActivation``; running statistics come along.
- ``auxiliary_heads.0.*`` (``FCNHead``): ``convs`` and ``conv_cat`` as above, ``classifier`` ->
  ``conv_seg``.

Not converted (``ValueError`` naming the keys): other backbones; Swin with absolute position
embeddings (``convert_swin`` refuses them); a ConvNeXt output norm on the stem
(``hidden_states_norms.stem``), which TimmBackbone has no level for.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Optional

import torch

from .swin import convert_swin
from .vit import _unwrap

__all__ = ['convert_hf_upernet', 'CONVERTERS']

StateDict = Mapping[str, torch.Tensor]

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_BLOCK = r'encoder\.layers\.(\d+)\.blocks\.(\d+)\.'
# transformers' Swin (keys after ``backbone.`` and an optional ``swin.``) -> official Microsoft
# Swin names; None drops the key. The first full match wins.
_SWIN_RULES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r'embeddings\.patch_embeddings\.projection\.(weight|bias)', r'patch_embed.proj.\1'),
    (r'embeddings\.norm\.(weight|bias)', r'patch_embed.norm.\1'),
    (r'embeddings\.position_embeddings', 'absolute_pos_embed'),  # refused by convert_swin
    (rf'{_BLOCK}layernorm_before\.(weight|bias)', r'layers.\1.blocks.\2.norm1.\3'),
    (rf'{_BLOCK}layernorm_after\.(weight|bias)', r'layers.\1.blocks.\2.norm2.\3'),
    (rf'{_BLOCK}attention\.(?:self|relative_position_bias)\.relative_position_bias_table',
     r'layers.\1.blocks.\2.attn.relative_position_bias_table'),
    (rf'{_BLOCK}attention\.(?:self|relative_position_bias)\.relative_position_index', None),
    (rf'{_BLOCK}attention\.(?:output\.dense|o_proj)\.(weight|bias)',
     r'layers.\1.blocks.\2.attn.proj.\3'),
    (rf'{_BLOCK}(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)',
     r'layers.\1.blocks.\2.mlp.fc1.\3'),
    (rf'{_BLOCK}(?:output\.dense|mlp\.fc2)\.(weight|bias)', r'layers.\1.blocks.\2.mlp.fc2.\3'),
    (r'encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)',
     r'layers.\1.downsample.\2.\3'),
    (r'layernorm\.(weight|bias)', r'norm.\1'),  # the classification norm; convert_swin drops it
)]
_SWIN_QKV = re.compile(rf'{_BLOCK}attention\.(?:self\.(query|key|value)|([qkv])_proj)\.'
                       r'(weight|bias)')
_OUT_NORM = re.compile(r'hidden_states_norms\.stage(\d+)\.(weight|bias)')

_STAGE = r'encoder\.stages\.(\d+)\.'
# transformers' ConvNeXt (keys after ``backbone.``) -> timm's ConvNeXt; the first full match wins
_CONVNEXT_RULES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r'embeddings\.patch_embeddings\.(weight|bias)', r'stem.0.\1'),
    (r'embeddings\.layernorm\.(weight|bias)', r'stem.1.\1'),
    (rf'{_STAGE}downsampling_layer\.([01])\.(weight|bias)', r'stages.\1.downsample.\2.\3'),
    (rf'{_STAGE}layers\.(\d+)\.dwconv\.(weight|bias)', r'stages.\1.blocks.\2.conv_dw.\3'),
    (rf'{_STAGE}layers\.(\d+)\.layernorm\.(weight|bias)', r'stages.\1.blocks.\2.norm.\3'),
    (rf'{_STAGE}layers\.(\d+)\.pwconv1\.(weight|bias)', r'stages.\1.blocks.\2.mlp.fc1.\3'),
    (rf'{_STAGE}layers\.(\d+)\.pwconv2\.(weight|bias)', r'stages.\1.blocks.\2.mlp.fc2.\3'),
    (rf'{_STAGE}layers\.(\d+)\.layer_scale_parameter', r'stages.\1.blocks.\2.gamma'),
)]
_TIMM_PREFIX = 'model.model.'  # where TimmBackbone keeps the timm model's own names

# transformers' UperNet heads -> densevit's UPerHead / FCNHead; a ConvModule's conv / batch_norm
# are Conv2dNormActivation's 0 / 1.
_HEAD_RULES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r'decode_head\.psp_modules\.(\d+)\.1\.', r'decode_head.ppm.branches.\1.1.'),
    (r'decode_head\.bottleneck\.', 'decode_head.ppm.bottleneck.'),
    (r'decode_head\.(lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck)\.', r'decode_head.\1.'),
    (r'auxiliary_head\.(convs\.\d+|conv_cat)\.', r'auxiliary_heads.0.\1.'),
)]
_CONV_MODULE = re.compile(rf'(conv\.weight|batch_norm\.{_BN})')
_CLASSIFIER = re.compile(r'(decode_head|auxiliary_head)\.classifier\.(weight|bias)')


def _refuse(keys: list[str], what: str) -> None:
    if keys:
        shown = ', '.join(keys[:8]) + (f' ... ({len(keys)} keys)' if len(keys) > 8 else '')
        raise ValueError(f'transformers UperNet checkpoint: {what}: {shown}')


def _convert_swin_backbone(weights: StateDict) -> dict[str, torch.Tensor]:
    """transformers' ``SwinBackbone`` tensors (keys without ``backbone.``) -> densevit ``Swin``
    keys (without ``backbone.``)."""
    official, qkv, out_norms, unknown = {}, {}, {}, []
    for key, value in weights.items():
        key = key.removeprefix('swin.')  # transformers >= 5 keeps SwinModel under .swin
        match = _SWIN_QKV.fullmatch(key)
        if match:
            stage, block, long_name, short_name, param = match.groups()
            part = (long_name or short_name)[0]  # query / q -> 'q'
            qkv[(int(stage), int(block), param, part)] = value
            continue
        match = _OUT_NORM.fullmatch(key)
        if match:
            out_norms[(int(match[1]), match[2])] = value
            continue
        for pattern, replacement in _SWIN_RULES:
            match = pattern.fullmatch(key)
            if match:
                if replacement is not None:
                    official[match.expand(replacement)] = value
                break
        else:
            unknown.append('backbone.' + key)
    _refuse(unknown, 'backbone keys that are not transformers Swin parameters')
    for stage, block, param in sorted({k[:3] for k in qkv}):
        missing = [p for p in 'qkv' if (stage, block, param, p) not in qkv]
        if missing:
            raise ValueError(f'transformers UperNet checkpoint: Swin stage {stage} block {block} '
                             f'has no {"/".join(missing)} projection {param}')
        # three (C, C) / (C,) projections -> (3C, C) / (3C,), rows q, k, v as timm's qkv
        official[f'layers.{stage}.blocks.{block}.attn.qkv.{param}'] = torch.cat(
            [qkv[(stage, block, param, p)] for p in 'qkv'], 0)
    out = convert_swin(official)
    out.update(_out_norms(out_norms, patch=official['patch_embed.proj.weight'].shape[-1]))
    return out


def _out_norms(norms: Mapping[tuple[int, str], torch.Tensor], patch: int
               ) -> dict[str, torch.Tensor]:
    """``hidden_states_norms.stage{k}`` tensors -> ``out_norms.s{stride}``: transformers' stage
    k (1-based) has stride patch * 2**(k-1)."""
    return {f'out_norms.s{patch * 2 ** (stage - 1)}.{param}': value
            for (stage, param), value in norms.items()}


def _convert_convnext_backbone(weights: StateDict) -> dict[str, torch.Tensor]:
    """transformers' ``ConvNextBackbone`` tensors (keys without ``backbone.``) -> densevit
    ``TimmBackbone`` keys over timm's ConvNeXt (without ``backbone.``)."""
    out, out_norms, unknown = {}, {}, []
    for key, value in weights.items():
        match = _OUT_NORM.fullmatch(key)
        if match:
            out_norms[(int(match[1]), match[2])] = value
            continue
        for pattern, replacement in _CONVNEXT_RULES:
            match = pattern.fullmatch(key)
            if match:
                out[_TIMM_PREFIX + match.expand(replacement)] = value
                break
        else:
            unknown.append('backbone.' + key)
    _refuse(unknown, 'backbone keys that are not transformers ConvNeXt parameters (or a stem '
                     'output norm, which TimmBackbone has no level for)')
    if _TIMM_PREFIX + 'stem.0.weight' not in out:
        raise ValueError('transformers UperNet checkpoint: ConvNeXt backbone has no '
                         'backbone.embeddings.patch_embeddings.weight')
    out.update(_out_norms(out_norms, patch=out[_TIMM_PREFIX + 'stem.0.weight'].shape[-1]))
    return out


def _head_name(key: str) -> Optional[str]:
    """A transformers UperNet head key -> densevit's, or None if it is none of the heads'."""
    match = _CLASSIFIER.fullmatch(key)
    if match:
        head = 'decode_head' if match[1] == 'decode_head' else 'auxiliary_heads.0'
        return f'{head}.conv_seg.{match[2]}'
    for pattern, replacement in _HEAD_RULES:
        match = pattern.match(key)
        if match:
            rest = _CONV_MODULE.fullmatch(key[match.end():])
            if rest is None:
                return None
            # ConvModule conv.weight / batch_norm.X -> Conv2dNormActivation 0.weight / 1.X
            part = rest[1].replace('conv.', '0.', 1).replace('batch_norm.', '1.', 1)
            return match.expand(replacement) + part
    return None


def convert_hf_upernet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """transformers ``UperNetForSemanticSegmentation`` (Swin or ConvNeXt backbone) -> densevit
    ``Segmentor`` keys ``backbone.*``, ``decode_head.*``, ``auxiliary_heads.0.*`` (see the module
    docstring).

    Args:
        state_dict: the model's tensors (``model.safetensors`` / ``pytorch_model.bin`` of a Hub
            repository, or ``model.state_dict()``), or a checkpoint holding them under ``'model'``
            / ``'state_dict'``.

    Raises:
        ValueError: the backbone is neither a Swin nor a ConvNeXt, is a Swin with absolute
            position embeddings, or a key belongs to no part of the model.
    """
    weights = _unwrap(state_dict)
    backbone = {k.removeprefix('backbone.'): v for k, v in weights.items()
                if k.startswith('backbone.')}
    if not backbone:
        raise ValueError(f'transformers UperNet checkpoint has no backbone.* keys (first keys: '
                         f'{list(weights)[:4]})')
    convnext = any(k.startswith('encoder.stages.') for k in backbone)
    convert = _convert_convnext_backbone if convnext else _convert_swin_backbone
    out = {'backbone.' + k: v for k, v in convert(backbone).items()}
    unknown = []
    for key, value in weights.items():
        if key.startswith('backbone.'):
            continue
        new = _head_name(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    _refuse(unknown, 'keys no densevit module takes')
    # a BatchNorm saved without its counter (older files) gets the zero of a fresh one
    for key in [k for k in out if k.endswith('.running_mean')]:
        out.setdefault(key[:-len('running_mean')] + 'num_batches_tracked',
                       torch.zeros((), dtype=torch.long))
    return out


CONVERTERS: dict[str, Callable[[StateDict], dict[str, torch.Tensor]]] = {
    'hf_upernet': convert_hf_upernet,
}
