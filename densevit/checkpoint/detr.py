"""Converters from DETR-family detector checkpoints to the whole-model keys of densevit's
``Detector(backbone=TimmBackbone('resnet50'), neck=ChannelMapper, head=DeformableDETR | DINO)``
(pure ``state_dict -> state_dict`` functions; load with ``densevit.checkpoint.load_state_dict``).

Output keys:
- ``backbone.model.model.*``: the ResNet in timm's names, which ``TimmBackbone`` keeps under
  timm's feature wrapper; renamed by ``densevit.checkpoint.resnet`` (torchvision / timm,
  transformers' and detectron2's namings, the latter with the stride in the 3x3 conv as in
  detrex's configs; frozen-BN checkpoints get a zero ``num_batches_tracked``).
- ``neck.lateral.s{stride}.{conv,norm}.*`` and ``neck.extra.s{stride}.{conv,norm}.*``: the input
  projections (1x1 conv + GroupNorm per backbone level, 3x3 stride-2 conv + GroupNorm per extra
  level) of ``ChannelMapper``. A ResNet's K projected levels are its last K stages (s32 last).
- ``head.*``: ``DeformableDETR`` / ``DINO`` keep the official module names (see their docstrings),
  so the official ``transformer.*`` and prediction-head keys only lose their aliases
  (``transformer.decoder.class_embed`` / ``bbox_embed``, the same tensors as ``class_embed`` /
  ``bbox_embed``).

Layouts, told apart by their keys:
- ``deformable_detr``: fundamentalvision/Deformable-DETR (``backbone.0.body.*``, ``input_proj.*``,
  ``transformer.*``, ``class_embed.*``, ``bbox_embed.*``, ``query_embed``); transformers'
  ``DeformableDetrForObjectDetection`` as saved on the Hub (``model.backbone.conv_encoder.model.*``,
  ``self_attn.out_proj``, ``fc1``) or as transformers >= 5 names it in memory
  (``model.backbone.model.*``, ``self_attn.o_proj``, ``mlp.fc1``): its decoder self-attention's
  separate ``q/k/v_proj`` are packed into ``nn.MultiheadAttention``'s ``in_proj_weight`` (q, k, v).
- ``dino``: IDEA-Research/DINO (the Deformable-DETR names plus ``transformer.tgt_embed``,
  ``transformer.enc_out_{class,bbox}_embed``, ``transformer.decoder.{norm,ref_point_head}``,
  ``label_enc``); detrex's DINO (``transformer.level_embeds``, layers of ``attentions`` /
  ``norms`` / ``ffns``, ``neck.convs`` / ``neck.extra_convs``, a detectron2 ResNet or the ViTDet
  backbone ``backbone.net`` + ``backbone.simfp_*``). detrex keeps one class / box head per
  decoder layer plus the encoder's as the last entry (load into ``DINO(share_pred_layers=False)``,
  with ``pos_temperature=10000, pos_offset=-0.5`` as its configs); its ``label_enc`` has
  ``num_classes`` rows and gets a zero row appended (densevit's has ``num_classes + 1``, as
  DINO's). For the ViTDet backbone the pyramid and the channel mapper are two necks in a row:
  ``backbone.*`` (``ViT``), ``neck.0.*`` (``SimpleFeaturePyramid``, by ``convert_vitdet``) and
  ``neck.1.*`` (``ChannelMapper``), for a detector whose ``neck`` is the list of the two.

COCO label space: the official Deformable DETR and DINO checkpoints (and transformers' Hub
models) classify into 91 slots indexed by COCO category id; densevit's COCO dataset numbers the 80
categories 0..79 in category-id order. With ``coco_ids_to_labels=None`` (the default) a class head
of 91 rows is cut down to the 80 rows of the real category ids (and DINO's ``label_enc`` of 92 rows
to those 80 plus its last row); pass False to keep the checkpoint's label space.

Not converted (``ValueError`` naming the keys): other backbones (Swin, ConvNeXt, ...), learned
position embeddings, and keys that belong to none of the parts above.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Optional

import torch

from .resnet import TIMM_PREFIX, rename_resnet
from .vit import _unwrap, convert_vitdet

__all__ = ['convert_deformable_detr', 'convert_dino', 'CONVERTERS']

StateDict = Mapping[str, torch.Tensor]
Rules = list[tuple[re.Pattern, Optional[str]]]

BACKBONE = 'backbone.' + TIMM_PREFIX  # the detector's TimmBackbone
COCO_NUM_SLOTS = 91  # class slots of the official COCO heads: category ids 0..90


def _rules(*pairs: tuple[str, Optional[str]]) -> Rules:
    """(regex, replacement or None = drop) pairs, compiled; the first full match wins."""
    return [(re.compile(pattern), replacement) for pattern, replacement in pairs]


def _apply(rules: Rules, key: str) -> tuple[bool, Optional[str]]:
    """(matched, new key or None to drop) for the first rule that matches ``key`` whole."""
    for pattern, replacement in rules:
        match = pattern.fullmatch(key)
        if match:
            return True, None if replacement is None else match.expand(replacement)
    return False, None


def _raise_unknown(unknown: Iterable[str], layout: str) -> None:
    unknown = list(unknown)
    backbone = [k for k in unknown if k.startswith('backbone.')]
    if backbone:
        raise ValueError(f'{layout}: backbone keys {backbone[:5]} ({len(backbone)} in all) are '
                         'neither a ResNet nor a ViTDet backbone; only ResNet backbones (and '
                         "detrex's ViTDet) are converted")
    if unknown:
        shown = ', '.join(unknown[:10]) + (f' ... ({len(unknown)} keys)' if len(unknown) > 10
                                           else '')
        raise ValueError(f'{layout} checkpoint has keys no densevit module takes: {shown}')


# ----------------------------------------------------------------------------------- backbone
def _resnet_strides(num_levels: int) -> list[int]:
    """Strides of a ResNet's last ``num_levels`` stages (s32 the last)."""
    if not 1 <= num_levels <= 4:
        raise ValueError(f'a ResNet gives 1 to 4 levels (s4..s32), the checkpoint projects '
                         f'{num_levels}')
    return [32 // 2 ** (num_levels - 1 - i) for i in range(num_levels)]


# --------------------------------------------------------------------------------------- neck
def _convert_projections(laterals: Mapping[int, dict[str, torch.Tensor]],
                         extras: Mapping[int, dict[str, torch.Tensor]],
                         lateral_strides: list[int], prefix: str = 'neck.'
                         ) -> dict[str, torch.Tensor]:
    """Projection convs ({index: {'conv.weight': ..., 'norm.bias': ...}}) -> ChannelMapper keys:
    laterals at ``lateral_strides``, extras at the doubling strides after the last lateral."""
    out = {}
    for index, stride in zip(sorted(laterals), lateral_strides):
        out.update({f'{prefix}lateral.s{stride}.{k}': v for k, v in laterals[index].items()})
    stride = lateral_strides[-1]
    for index in sorted(extras):
        stride *= 2
        out.update({f'{prefix}extra.s{stride}.{k}': v for k, v in extras[index].items()})
    return out


def _split_input_proj(proj: Mapping[int, dict[str, torch.Tensor]]
                      ) -> tuple[dict[int, dict], dict[int, dict]]:
    """``input_proj.{n}`` Sequentials of (conv, GroupNorm): 1x1 convs project backbone levels,
    the 3x3 stride-2 ones make the extra levels."""
    laterals, extras = {}, {}
    for index, params in proj.items():
        kernel = params['conv.weight'].shape[-1]
        (laterals if kernel == 1 else extras)[index] = params
    if extras and laterals and min(extras) < max(laterals):
        raise ValueError(f'input_proj: extra (3x3) levels {sorted(extras)} come before backbone '
                         f'(1x1) levels {sorted(laterals)}')
    return laterals, extras


# --------------------------------------------------------------------------------------- COCO
def _coco_rows(extra_rows: int = 0) -> list[int]:
    """Rows of a 91-slot COCO head that hold the 80 real categories (in category-id order, which
    is densevit's label order), plus ``extra_rows`` rows after slot 90."""
    from ..datasets.metainfo import COCO_CAT_IDS  # constants only; imported when needed
    return list(COCO_CAT_IDS) + [COCO_NUM_SLOTS + i for i in range(extra_rows)]


def _remap_coco(out: dict[str, torch.Tensor], class_keys: list[str], label_key: Optional[str],
                coco_ids_to_labels: Optional[bool]) -> None:
    """Cut 91-slot class heads (and DINO's 92-row label_enc) to the 80 COCO labels, in place."""
    rows = {out[k].shape[0] for k in class_keys}
    if not rows:
        return
    if len(rows) != 1:
        raise ValueError(f'class heads disagree on the number of classes: {sorted(rows)}')
    num_slots = rows.pop()
    if coco_ids_to_labels is None:
        coco_ids_to_labels = num_slots == COCO_NUM_SLOTS
    if not coco_ids_to_labels:
        return
    if num_slots != COCO_NUM_SLOTS:
        raise ValueError(f'coco_ids_to_labels=True needs class heads of {COCO_NUM_SLOTS} COCO '
                         f'category slots, the checkpoint has {num_slots}')
    for key in class_keys:
        out[key] = out[key][_coco_rows()]
    if label_key in out:
        extra = out[label_key].shape[0] - COCO_NUM_SLOTS
        out[label_key] = out[label_key][_coco_rows(extra)]


def _class_keys(out: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k in out if re.fullmatch(
        r'head\.(class_embed\.\d+|transformer\.enc_out_class_embed)\.(weight|bias)', k)]


# ---------------------------------------------------------------------------- Deformable DETR
_OFFICIAL_HEAD = _rules(
    (r'transformer\.decoder\.(class|bbox)_embed\..*', None),  # aliases of the head's modules
    (r'(transformer\..+|class_embed\..+|bbox_embed\..+|query_embed\.weight|label_enc\.weight)',
     r'head.\1'),
)

_HF_LAYER = r'model\.(encoder|decoder)\.layers\.(\d+)\.'
_HF_RULES = _rules(
    (r'model\.decoder\.(class|bbox)_embed\..*', None),  # aliases of class_embed / bbox_embed
    (r'model\.level_embed', 'head.transformer.level_embed'),
    (r'model\.query_position_embeddings\.weight', 'head.query_embed.weight'),
    (r'model\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.'
     r'(weight|bias)', r'head.transformer.\1.\2'),
    (r'model\.encoder\.layers\.(\d+)\.self_attn\.(.+)',
     r'head.transformer.encoder.layers.\1.self_attn.\2'),
    (r'model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)',
     r'head.transformer.encoder.layers.\1.norm1.\2'),
    (r'model\.encoder\.layers\.(\d+)\.final_layer_norm\.(.+)',
     r'head.transformer.encoder.layers.\1.norm2.\2'),
    (r'model\.decoder\.layers\.(\d+)\.self_attn\.(out_proj|o_proj)\.(.+)',
     r'head.transformer.decoder.layers.\1.self_attn.out_proj.\3'),
    (r'model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)',
     r'head.transformer.decoder.layers.\1.norm2.\2'),
    (r'model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.+)',
     r'head.transformer.decoder.layers.\1.norm1.\2'),
    (r'model\.decoder\.layers\.(\d+)\.encoder_attn\.(.+)',
     r'head.transformer.decoder.layers.\1.cross_attn.\2'),
    (r'model\.decoder\.layers\.(\d+)\.final_layer_norm\.(.+)',
     r'head.transformer.decoder.layers.\1.norm3.\2'),
    (rf'{_HF_LAYER}(mlp\.)?fc1\.(.+)', r'head.transformer.\1.layers.\2.linear1.\4'),
    (rf'{_HF_LAYER}(mlp\.)?fc2\.(.+)', r'head.transformer.\1.layers.\2.linear2.\4'),
    (r'(class_embed|bbox_embed)\.(.+)', r'head.\1.\2'),
)
_HF_QKV = re.compile(r'model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)')
_HF_BACKBONE = re.compile(r'model\.backbone\.(?:conv_encoder\.)?model\.(.+)')
_PROJ = re.compile(r'(?:model\.)?input_proj\.(\d+)\.([01])\.(weight|bias)')


def _pack_qkv(parts: Mapping[tuple[str, str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' separate q/k/v projections -> nn.MultiheadAttention's packed in_proj."""
    out = {}
    for layer, param in sorted({(layer, param) for layer, _, param in parts}):
        missing = [p for p in 'qkv' if (layer, p, param) not in parts]
        if missing:
            raise ValueError(f'decoder layer {layer} self_attn has no {missing} {param}')
        packed = torch.cat([parts[(layer, p, param)] for p in 'qkv'], 0)  # (3D, D) or (3D,)
        out[f'head.transformer.decoder.layers.{layer}.self_attn.in_proj_{param}'] = packed
    return out


def convert_deformable_detr(state_dict: StateDict, *, coco_ids_to_labels: Optional[bool] = None
                            ) -> dict[str, torch.Tensor]:
    """Official Deformable DETR or transformers' ``DeformableDetrForObjectDetection`` ->
    ``Detector(TimmBackbone resnet, ChannelMapper, DeformableDETR)`` keys (module docstring).

    Args:
        state_dict: the checkpoint's tensors, or the checkpoint dict holding them under
            ``'model'`` / ``'state_dict'``.
        coco_ids_to_labels: cut 91-slot COCO heads to the 80 labels; None = when they have 91.
    """
    sd = _unwrap(state_dict)
    if any(k.startswith('model.') for k in sd):
        return _convert_transformers(sd, coco_ids_to_labels)
    if 'transformer.level_embed' in sd and any(k.startswith('backbone.0.body.') for k in sd):
        out = _convert_official(sd, 'Deformable DETR')
        _remap_coco(out, _class_keys(out), None, coco_ids_to_labels)
        return out
    raise ValueError('not a Deformable DETR checkpoint: expected the official layout '
                     "('transformer.level_embed', 'backbone.0.body.*') or transformers' "
                     f"('model.*'); first keys: {list(sd)[:5]}")


def _convert_official(sd: StateDict, layout: str) -> dict[str, torch.Tensor]:
    """Deformable-DETR-style checkpoints (also IDEA-Research DINO): backbone.0.body, input_proj,
    transformer and the prediction heads."""
    body, proj, out, unknown = {}, {}, {}, []
    for key, value in sd.items():
        if key.startswith('backbone.0.body.'):
            body[key[len('backbone.0.body.'):]] = value
            continue
        match = _PROJ.fullmatch(key)
        if match:
            part = 'conv' if match[2] == '0' else 'norm'
            proj.setdefault(int(match[1]), {})[f'{part}.{match[3]}'] = value
            continue
        matched, new = _apply(_OFFICIAL_HEAD, key)
        if not matched:
            unknown.append(key)
        elif new is not None:
            out[new] = value
    _raise_unknown(unknown, layout)
    out.update(rename_resnet(body, prefix=BACKBONE, layout=layout))
    laterals, extras = _split_input_proj(proj)
    out.update(_convert_projections(laterals, extras, _resnet_strides(len(laterals))))
    return out


def _convert_transformers(sd: StateDict, coco_ids_to_labels: Optional[bool]
                          ) -> dict[str, torch.Tensor]:
    layout = "transformers' DeformableDetrForObjectDetection"
    body, proj, qkv, out, unknown = {}, {}, {}, {}, []
    for key, value in sd.items():
        match = _HF_BACKBONE.fullmatch(key)
        if match:
            body[match[1]] = value
            continue
        match = _PROJ.fullmatch(key)
        if match:
            part = 'conv' if match[2] == '0' else 'norm'
            proj.setdefault(int(match[1]), {})[f'{part}.{match[3]}'] = value
            continue
        match = _HF_QKV.fullmatch(key)
        if match:
            qkv[(int(match[1]), match[2], match[3])] = value
            continue
        matched, new = _apply(_HF_RULES, key)
        if not matched:
            unknown.append(key)
        elif new is not None:
            out[new] = value
    _raise_unknown(unknown, layout)
    out.update(_pack_qkv(qkv))
    out.update(rename_resnet(body, prefix=BACKBONE, layout=layout))
    laterals, extras = _split_input_proj(proj)
    out.update(_convert_projections(laterals, extras, _resnet_strides(len(laterals))))
    _remap_coco(out, _class_keys(out), None, coco_ids_to_labels)
    return out


# --------------------------------------------------------------------------------------- DINO
_DETREX_ENC = r'transformer\.encoder\.layers\.(\d+)\.'
_DETREX_DEC = r'transformer\.decoder\.layers\.(\d+)\.'
_DETREX_RULES = _rules(
    (r'transformer\.decoder\.(class|bbox)_embed\..*', None),  # aliases of the head's modules
    (r'criterion\..*', None),
    (r'transformer\.level_embeds', 'head.transformer.level_embed'),
    (r'transformer\.(tgt_embed|enc_output|enc_output_norm)\.(weight|bias)',
     r'head.transformer.\1.\2'),
    (r'transformer\.decoder\.(ref_point_head\.layers\.[01]|norm)\.(weight|bias)',
     r'head.transformer.decoder.\1.\2'),
    (rf'{_DETREX_ENC}attentions\.0\.(.+)', r'head.transformer.encoder.layers.\1.self_attn.\2'),
    (rf'{_DETREX_ENC}norms\.0\.(.+)', r'head.transformer.encoder.layers.\1.norm1.\2'),
    (rf'{_DETREX_ENC}norms\.1\.(.+)', r'head.transformer.encoder.layers.\1.norm2.\2'),
    (rf'{_DETREX_DEC}attentions\.0\.attn\.(.+)',
     r'head.transformer.decoder.layers.\1.self_attn.\2'),
    (rf'{_DETREX_DEC}attentions\.1\.(.+)', r'head.transformer.decoder.layers.\1.cross_attn.\2'),
    # decoder order: self_attn, norm (norm2), cross_attn, norm (norm1), ffn, norm (norm3)
    (rf'{_DETREX_DEC}norms\.0\.(.+)', r'head.transformer.decoder.layers.\1.norm2.\2'),
    (rf'{_DETREX_DEC}norms\.1\.(.+)', r'head.transformer.decoder.layers.\1.norm1.\2'),
    (rf'{_DETREX_DEC}norms\.2\.(.+)', r'head.transformer.decoder.layers.\1.norm3.\2'),
    # FFN: layers = Sequential(Sequential(Linear, act, drop), Linear, drop)
    (r'transformer\.(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(.+)',
     r'head.transformer.\1.layers.\2.linear1.\3'),
    (r'transformer\.(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.1\.(.+)',
     r'head.transformer.\1.layers.\2.linear2.\3'),
    (r'label_enc\.weight', 'head.label_enc.weight'),
)
_DETREX_PRED = re.compile(r'(class|bbox)_embed\.(\d+)\.(.+)')
_DETREX_NECK = re.compile(r'neck\.(convs|extra_convs)\.(\d+)\.(conv|norm)\.(weight|bias)')
_DETREX_RESNET = re.compile(r'backbone\.((?:stem|res[2-5])\..+)')
_DETREX_VITDET = re.compile(r'backbone\.(?:net|simfp_\d+)\..+')


def convert_dino(state_dict: StateDict, *, coco_ids_to_labels: Optional[bool] = None
                 ) -> dict[str, torch.Tensor]:
    """IDEA-Research DINO or detrex DINO -> ``Detector(TimmBackbone resnet | ViT,
    ChannelMapper | [SimpleFeaturePyramid, ChannelMapper], DINO)`` keys (module docstring).

    Args:
        state_dict: the checkpoint's tensors, or the checkpoint dict holding them under
            ``'model'`` / ``'state_dict'``.
        coco_ids_to_labels: cut 91-slot COCO heads to the 80 labels; None = when they have 91.
    """
    sd = _unwrap(state_dict)
    if 'transformer.level_embeds' in sd:
        out = _convert_detrex_dino(sd)  # detrex's COCO configs have 80 contiguous labels
    elif 'transformer.level_embed' in sd and 'transformer.tgt_embed.weight' in sd:
        out = _convert_official(sd, 'DINO')
    else:
        raise ValueError("not a DINO checkpoint: expected IDEA-Research's layout "
                         "('transformer.level_embed', 'transformer.tgt_embed.weight') or "
                         f"detrex's ('transformer.level_embeds'); first keys: {list(sd)[:5]}")
    _remap_coco(out, _class_keys(out), 'head.label_enc.weight', coco_ids_to_labels)
    return out


def _convert_detrex_dino(sd: StateDict) -> dict[str, torch.Tensor]:
    layout = "detrex's DINO"
    num_layers = len({int(m[1]) for k in sd
                      if (m := re.match(r'transformer\.decoder\.layers\.(\d+)\.', k))})
    resnet, vitdet, convs, out, unknown = {}, {}, {'convs': {}, 'extra_convs': {}}, {}, []
    for key, value in sd.items():
        match = _DETREX_RESNET.fullmatch(key)
        if match:
            resnet[match[1]] = value
            continue
        if _DETREX_VITDET.fullmatch(key):
            vitdet[key] = value
            continue
        match = _DETREX_NECK.fullmatch(key)
        if match:
            convs[match[1]].setdefault(int(match[2]), {})[f'{match[3]}.{match[4]}'] = value
            continue
        match = _DETREX_PRED.fullmatch(key)
        if match:
            kind, index, param = match[1], int(match[2]), match[3]
            # the entry after the decoder layers' scores the encoder proposals
            out[f'head.transformer.enc_out_{kind}_embed.{param}' if index == num_layers
                else f'head.{kind}_embed.{index}.{param}'] = value
            continue
        matched, new = _apply(_DETREX_RULES, key)
        if not matched:
            unknown.append(key)
        elif new is not None:
            out[new] = value
    _raise_unknown(unknown, layout)
    if resnet and vitdet:
        raise ValueError(f'{layout}: both a detectron2 ResNet and a ViTDet backbone in one file')
    if 'head.label_enc.weight' in out:  # num_classes rows -> num_classes + 1, as DINO's
        label_enc = out['head.label_enc.weight']
        out['head.label_enc.weight'] = torch.cat([label_enc, label_enc.new_zeros(
            1, label_enc.shape[1])])
    laterals, extras = convs['convs'], convs['extra_convs']
    if vitdet:
        pyramid = convert_vitdet(vitdet)  # backbone.* (ViT) and neck.* (SimpleFeaturePyramid)
        strides = sorted({int(m[1]) for k in pyramid
                          if (m := re.match(r'neck\.lateral\.s(\d+)\.', k))})
        if len(laterals) == len(strides) + 1:  # detrex's LastLevelMaxPool level (p6)
            strides.append(2 * strides[-1])
        if len(laterals) != len(strides):
            raise ValueError(f'{layout}: the channel mapper projects {len(laterals)} levels, the '
                             f'ViTDet pyramid gives {len(strides)} (strides {strides})')
        out.update({('neck.0.' + k[len('neck.'):] if k.startswith('neck.') else k): v
                    for k, v in pyramid.items()})
        out.update(_convert_projections(laterals, extras, strides, prefix='neck.1.'))
    else:
        out.update(rename_resnet(resnet, prefix=BACKBONE, layout=layout))
        out.update(_convert_projections(laterals, extras, _resnet_strides(len(laterals))))
    return out


CONVERTERS: dict[str, Callable[[StateDict], dict[str, torch.Tensor]]] = {
    'deformable_detr': convert_deformable_detr,
    'dino': convert_dino,
}
