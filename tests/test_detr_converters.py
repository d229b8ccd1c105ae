"""Converters of densevit.checkpoint.detr (``deformable_detr``, ``dino``) and of the ImageNet
ResNets they share their renaming with (densevit.checkpoint.resnet, ``resnet``): each layout is
converted and loaded into the densevit model it targets, and the load report must be empty (no
missing, unexpected or resized key: every key of the model is filled with the right shape).

Where the state dicts come from:
- ImageNet ResNet-50s are made by torchvision (``torchvision.models.resnet50()``) and timm
  (``timm.create_model('resnet50')``) themselves; detectron2's names for torchvision's file are
  made from torchvision's by the renaming of detectron2's ``tools/convert-torchvision-to-d2.py``.
- transformers' ``DeformableDetrForObjectDetection`` is built by the reference package itself
  (random init, no download), with its timm ResNet-50 and with transformers' own ResNet; its Hub
  names (``conv_encoder``, ``out_proj``, ``fc1``) are made from the in-memory names with the
  renamings transformers' ``conversion_mapping.py`` lists for ``deformable_detr``.
- fundamentalvision/Deformable-DETR, IDEA-Research/DINO and detrex cannot be installed here, so
  their state dicts come from small modules below that build the official modules' attributes
  under the official names, read from their sources: Deformable-DETR ``models/deformable_detr.py``
  (``DeformableDETR.__init__``: input_proj, class_embed / bbox_embed clones and the
  ``transformer.decoder`` aliases, query_embed), ``models/deformable_transformer.py`` (layer
  attributes), ``models/ops/modules/ms_deform_attn.py``, ``models/backbone.py`` (torchvision
  ResNet-50 body through IntermediateLayerGetter, FrozenBatchNorm2d without num_batches_tracked);
  DINO ``models/dino/dino.py`` and ``deformable_transformer.py`` (label_enc of dn_labelbook_size + 1
  rows, shared decoder heads, copied enc_out heads, tgt_embed, decoder norm and ref_point_head);
  detrex ``projects/dino/modeling/{dino,dino_transformer}.py``, ``detrex/layers/{transformer,mlp,
  attention,multi_scale_deform_attn,conv}.py``, ``detrex/modeling/neck/channel_mapper.py`` and the
  detectron2 ResNet / ViTDet names of ``projects/dino/configs/models/dino_{r50,vitdet}.py``.
"""
from __future__ import annotations

import copy
import functools
import os.path as osp
import re
import textwrap

import pytest
import timm
import torch
import torchvision
from torch import nn

from densevit.apis.config import load_config
from densevit.checkpoint import converters
from densevit.checkpoint.detr import CONVERTERS, convert_deformable_detr, convert_dino
from densevit.checkpoint.loading import load_state_dict
from densevit.checkpoint.resnet import convert_resnet
from densevit.datasets.metainfo import COCO_CAT_IDS
from densevit.models.backbones.timm_backbone import TimmBackbone
from densevit.models.heads.detr import deformable_detr, dino  # noqa: F401  (registers heads)
from densevit.models.necks.channel_mapper import ChannelMapper
from densevit.models.necks.simple_feature_pyramid import SimpleFeaturePyramid
from densevit.models.tasks.detector import Detector
from densevit.registry import MODELS
from tools.convert_checkpoint import main as convert_main

from .conftest import ROOT
from .test_vit_converters import _detectron2_vitdet_state_dict

DIM, HEADS, FFN, LEVELS, POINTS, QUERIES = 64, 2, 128, 4, 2, 20
ENC_LAYERS, DEC_LAYERS = 1, 2
RESNET50_BLOCKS = (3, 4, 6, 3)
CRITERION = dict(type='SetCriterion', matcher=dict(type='HungarianMatcher'))


# ------------------------------------------------------------------ densevit models
@functools.lru_cache(maxsize=None)
def _detector() -> Detector:
    """Detector(TimmBackbone resnet50 s8..s32, ChannelMapper + s64, DeformableDETR), built once;
    the tests swap in the head they load into (the ResNet-50 is the slow part to build)."""
    return Detector(
        backbone=dict(type='TimmBackbone', model_name='resnet50', out_indices=(2, 3, 4)),
        neck=dict(type='ChannelMapper', in_features=('s8', 's16', 's32'), out_channels=DIM,
                  num_extra_levels=1),
        head=dict(type='DeformableDETR', num_classes=1, criterion=CRITERION, hidden_dim=DIM,
                  num_heads=HEADS, num_encoder_layers=1, num_decoder_layers=1, ffn_dim=FFN,
                  num_queries=QUERIES))


def densevit_detector(head: str, num_classes: int, **head_kwargs) -> Detector:
    """The Detector with a DeformableDETR / DINO head at the small transformer sizes above."""
    model = _detector()
    criterion = dict(CRITERION, enc_class_agnostic=head_kwargs.get('two_stage', False))
    model.head = MODELS.build(dict(
        type=head, input_shapes=model.neck.out_features, criterion=criterion,
        num_classes=num_classes, hidden_dim=DIM, num_heads=HEADS, num_encoder_layers=ENC_LAYERS,
        num_decoder_layers=DEC_LAYERS, ffn_dim=FFN, num_queries=QUERIES, enc_points=POINTS,
        dec_points=POINTS, **head_kwargs))
    return model


def assert_loads_cleanly(model: nn.Module, converted: dict) -> dict:
    report = load_state_dict(model, converted, log=False)
    assert report.clean and not report.resized, str(report)
    return model.state_dict()


# ------------------------------------------------------------- the official modules' names
class MSDeformAttn(nn.Module):
    """Deformable-DETR models/ops/modules/ms_deform_attn.py (detrex's has the same four)."""

    def __init__(self):
        super().__init__()
        self.sampling_offsets = nn.Linear(DIM, HEADS * LEVELS * POINTS * 2)
        self.attention_weights = nn.Linear(DIM, HEADS * LEVELS * POINTS)
        self.value_proj = nn.Linear(DIM, DIM)
        self.output_proj = nn.Linear(DIM, DIM)


class MLP(nn.Module):
    """The DETR-family box MLP: ``layers`` = ModuleList of Linear."""

    def __init__(self, in_dim, hidden, out_dim, num_layers):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))


class OfficialEncoderLayer(nn.Module):  # DeformableTransformerEncoderLayer
    def __init__(self):
        super().__init__()
        self.self_attn = MSDeformAttn()
        self.norm1 = nn.LayerNorm(DIM)
        self.linear1 = nn.Linear(DIM, FFN)
        self.linear2 = nn.Linear(FFN, DIM)
        self.norm2 = nn.LayerNorm(DIM)


class OfficialDecoderLayer(nn.Module):  # DeformableTransformerDecoderLayer
    def __init__(self):
        super().__init__()
        self.cross_attn = MSDeformAttn()
        self.norm1 = nn.LayerNorm(DIM)
        self.self_attn = nn.MultiheadAttention(DIM, HEADS)
        self.norm2 = nn.LayerNorm(DIM)
        self.linear1 = nn.Linear(DIM, FFN)
        self.linear2 = nn.Linear(FFN, DIM)
        self.norm3 = nn.LayerNorm(DIM)


def official_body() -> dict[str, torch.Tensor]:
    """torchvision ResNet-50 through IntermediateLayerGetter (no avgpool / fc) with
    FrozenBatchNorm2d (weight, bias, running_mean, running_var; no num_batches_tracked)."""
    resnet = torchvision.models.resnet50()
    g = torch.Generator().manual_seed(3)
    return {k: torch.randn(v.shape, generator=g) for k, v in resnet.state_dict().items()
            if not k.startswith('fc.') and not k.endswith('num_batches_tracked')}


def input_proj(num_extra: int = 1) -> nn.ModuleList:
    """Deformable DETR / DINO input_proj: (Conv 1x1, GN) per backbone level, (Conv 3x3 s2, GN)."""
    projs = [nn.Sequential(nn.Conv2d(c, DIM, 1), nn.GroupNorm(32, DIM)) for c in (512, 1024, 2048)]
    in_channels = 2048
    for _ in range(num_extra):
        projs.append(nn.Sequential(nn.Conv2d(in_channels, DIM, 3, stride=2, padding=1),
                                   nn.GroupNorm(32, DIM)))
        in_channels = DIM
    return nn.ModuleList(projs)


def official_deformable_detr(num_classes: int, two_stage: bool, with_box_refine: bool
                             ) -> dict[str, torch.Tensor]:
    """fundamentalvision/Deformable-DETR's DeformableDETR state dict (names and shapes)."""
    model = nn.Module()
    transformer = model.transformer = nn.Module()
    transformer.encoder = nn.Module()
    transformer.encoder.layers = nn.ModuleList(OfficialEncoderLayer() for _ in range(ENC_LAYERS))
    transformer.decoder = nn.Module()
    transformer.decoder.layers = nn.ModuleList(OfficialDecoderLayer() for _ in range(DEC_LAYERS))
    transformer.level_embed = nn.Parameter(torch.randn(LEVELS, DIM))
    if two_stage:
        transformer.enc_output = nn.Linear(DIM, DIM)
        transformer.enc_output_norm = nn.LayerNorm(DIM)
        transformer.pos_trans = nn.Linear(2 * DIM, 2 * DIM)
        transformer.pos_trans_norm = nn.LayerNorm(2 * DIM)
    else:
        transformer.reference_points = nn.Linear(DIM, 2)
        model.query_embed = nn.Embedding(QUERIES, 2 * DIM)
    model.input_proj = input_proj()
    class_embed, bbox_embed = nn.Linear(DIM, num_classes), MLP(DIM, DIM, 4, 3)
    num_pred = DEC_LAYERS + 1 if two_stage else DEC_LAYERS
    if with_box_refine:
        model.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
        model.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
        transformer.decoder.bbox_embed = model.bbox_embed
    else:
        model.class_embed = nn.ModuleList(class_embed for _ in range(num_pred))
        model.bbox_embed = nn.ModuleList(bbox_embed for _ in range(num_pred))
    if two_stage:
        transformer.decoder.class_embed = model.class_embed
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd.update({'backbone.0.body.' + k: v for k, v in official_body().items()})
    return sd


def official_dino(num_classes: int, dn_labelbook_size: int) -> dict[str, torch.Tensor]:
    """IDEA-Research/DINO's DINO state dict (DINO_4scale: two_stage_type 'standard', shared decoder
    heads, enc_out heads copied, embed_init_tgt)."""
    model = nn.Module()
    transformer = model.transformer = nn.Module()
    transformer.encoder = nn.Module()
    transformer.encoder.layers = nn.ModuleList(OfficialEncoderLayer() for _ in range(ENC_LAYERS))
    transformer.decoder = nn.Module()
    transformer.decoder.layers = nn.ModuleList(OfficialDecoderLayer() for _ in range(DEC_LAYERS))
    transformer.decoder.norm = nn.LayerNorm(DIM)
    transformer.decoder.ref_point_head = MLP(2 * DIM, DIM, DIM, 2)
    transformer.level_embed = nn.Parameter(torch.randn(LEVELS, DIM))
    transformer.tgt_embed = nn.Embedding(QUERIES, DIM)
    transformer.enc_output = nn.Linear(DIM, DIM)
    transformer.enc_output_norm = nn.LayerNorm(DIM)
    model.label_enc = nn.Embedding(dn_labelbook_size + 1, DIM)
    model.input_proj = input_proj()
    class_embed, bbox_embed = nn.Linear(DIM, num_classes), MLP(DIM, DIM, 4, 3)
    model.bbox_embed = nn.ModuleList(bbox_embed for _ in range(DEC_LAYERS))
    model.class_embed = nn.ModuleList(class_embed for _ in range(DEC_LAYERS))
    transformer.decoder.bbox_embed = model.bbox_embed
    transformer.decoder.class_embed = model.class_embed
    transformer.enc_out_bbox_embed = copy.deepcopy(bbox_embed)
    transformer.enc_out_class_embed = copy.deepcopy(class_embed)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd.update({'backbone.0.body.' + k: v for k, v in official_body().items()})
    return sd


# detrex: BaseTransformerLayer(attentions, ffns, norms); FFN.layers = Sequential(Sequential(Linear,
# ReLU, Dropout), Linear, Dropout); MultiheadAttention wraps nn.MultiheadAttention as .attn
class DetrexFFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(DIM, FFN), nn.ReLU(), nn.Dropout()),
                                    nn.Linear(FFN, DIM), nn.Dropout())


class DetrexMultiheadAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)


class DetrexLayer(nn.Module):
    def __init__(self, attentions: list, num_norms: int):
        super().__init__()
        self.attentions = nn.ModuleList(attentions)
        self.ffns = nn.ModuleList([DetrexFFN()])
        self.norms = nn.ModuleList(nn.LayerNorm(DIM) for _ in range(num_norms))


class ConvNormAct(nn.Module):  # detrex/layers/conv.py
    def __init__(self, in_channels, kernel_size, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, DIM, kernel_size, stride, (kernel_size - 1) // 2)
        self.norm = nn.GroupNorm(32, DIM)


def detectron2_resnet50() -> dict[str, torch.Tensor]:
    """detectron2 ResNet-50 (BasicStem + BottleneckBlocks, FrozenBN) names and shapes:
    stem.conv1 (+ .norm), res{2..5}.{b}.conv{1,2,3} (+ .norm), block 0's shortcut (+ .norm)."""
    g = torch.Generator().manual_seed(4)
    sd = {}

    def conv(name, out_c, in_c, k):
        sd[name + '.weight'] = torch.randn(out_c, in_c, k, k, generator=g)
        for p in ('weight', 'bias', 'running_mean', 'running_var'):
            sd[f'{name}.norm.{p}'] = torch.randn(out_c, generator=g)

    conv('stem.conv1', 64, 3, 7)
    in_c = 64
    for stage, blocks in enumerate(RESNET50_BLOCKS):
        width, out_c = 64 * 2 ** stage, 256 * 2 ** stage
        for b in range(blocks):
            p = f'res{stage + 2}.{b}.'
            if b == 0:
                conv(p + 'shortcut', out_c, in_c, 1)
            conv(p + 'conv1', width, in_c if b == 0 else out_c, 1)
            conv(p + 'conv2', width, width, 3)
            conv(p + 'conv3', out_c, width, 1)
        in_c = out_c
    return sd


def detrex_dino_transformer(num_classes: int) -> nn.Module:
    """detrex's DINO without backbone and neck (transformer, heads, label_enc)."""
    model = nn.Module()
    transformer = model.transformer = nn.Module()
    transformer.encoder = nn.Module()
    transformer.encoder.layers = nn.ModuleList(DetrexLayer([MSDeformAttn()], 2)
                                               for _ in range(ENC_LAYERS))
    transformer.decoder = nn.Module()
    transformer.decoder.layers = nn.ModuleList(
        DetrexLayer([DetrexMultiheadAttention(), MSDeformAttn()], 3) for _ in range(DEC_LAYERS))
    transformer.decoder.ref_point_head = MLP(2 * DIM, DIM, DIM, 2)
    transformer.decoder.norm = nn.LayerNorm(DIM)
    transformer.level_embeds = nn.Parameter(torch.randn(LEVELS, DIM))
    transformer.tgt_embed = nn.Embedding(QUERIES, DIM)
    transformer.enc_output = nn.Linear(DIM, DIM)
    transformer.enc_output_norm = nn.LayerNorm(DIM)
    model.class_embed = nn.ModuleList(nn.Linear(DIM, num_classes) for _ in range(DEC_LAYERS + 1))
    model.bbox_embed = nn.ModuleList(MLP(DIM, DIM, 4, 3) for _ in range(DEC_LAYERS + 1))
    transformer.decoder.class_embed = model.class_embed
    transformer.decoder.bbox_embed = model.bbox_embed
    model.label_enc = nn.Embedding(num_classes, DIM)
    return model


def detrex_dino_r50(num_classes: int) -> dict[str, torch.Tensor]:
    model = detrex_dino_transformer(num_classes)
    model.neck = nn.Module()  # ChannelMapper(kernel_size=1, num_outs=4) on res3..res5
    model.neck.convs = nn.ModuleList(ConvNormAct(c, 1) for c in (512, 1024, 2048))
    model.neck.extra_convs = nn.ModuleList([ConvNormAct(2048, 3, 2)])
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd.update({'backbone.' + k: v for k, v in detectron2_resnet50().items()})
    return sd


# ------------------------------------------------------------------------------ the tests
def test_registered_kinds():
    assert set(CONVERTERS) == {'deformable_detr', 'dino'}
    assert {'deformable_detr', 'dino', 'resnet'} <= set(converters())


@pytest.mark.parametrize('two_stage,with_box_refine', [(False, False), (False, True),
                                                      (True, True)])
def test_official_deformable_detr_loads_cleanly(two_stage, with_box_refine):
    sd = official_deformable_detr(91, two_stage, with_box_refine)
    converted = convert_deformable_detr({'model': sd})
    model = densevit_detector('DeformableDETR', 80, two_stage=two_stage,
                              with_box_refine=with_box_refine)
    own = assert_loads_cleanly(model, converted)
    # exact tensors under the renamed keys; the 91 COCO slots cut to the 80 category ids
    same = {'backbone.model.model.layer3.5.bn2.running_var':
                'backbone.0.body.layer3.5.bn2.running_var',
            'backbone.model.model.layer1.0.downsample.0.weight':
                'backbone.0.body.layer1.0.downsample.0.weight',
            'neck.lateral.s8.conv.weight': 'input_proj.0.0.weight',
            'neck.lateral.s32.norm.bias': 'input_proj.2.1.bias',
            'neck.extra.s64.conv.weight': 'input_proj.3.0.weight',
            'head.transformer.decoder.layers.1.self_attn.in_proj_weight':
                'transformer.decoder.layers.1.self_attn.in_proj_weight',
            'head.bbox_embed.1.layers.2.weight': 'bbox_embed.1.layers.2.weight'}
    for ours, theirs in same.items():
        torch.testing.assert_close(own[ours], sd[theirs], rtol=0, atol=0)
    torch.testing.assert_close(own['head.class_embed.1.weight'],
                               sd['class_embed.1.weight'][list(COCO_CAT_IDS)], rtol=0, atol=0)
    assert own['backbone.model.model.bn1.num_batches_tracked'] == 0
    assert not any('decoder.class_embed' in k or 'decoder.bbox_embed' in k for k in converted)
    # the checkpoint's own 91-slot label space on request
    kept = convert_deformable_detr(sd, coco_ids_to_labels=False)
    assert kept['head.class_embed.0.weight'].shape == (91, DIM)


def test_official_dino_loads_cleanly_with_coco_label_space():
    sd = official_dino(num_classes=91, dn_labelbook_size=91)
    converted = convert_dino({'model': sd})
    model = densevit_detector('DINO', 80)
    own = assert_loads_cleanly(model, converted)
    ids = list(COCO_CAT_IDS)
    torch.testing.assert_close(own['head.label_enc.weight'], sd['label_enc.weight'][ids + [91]],
                               rtol=0, atol=0)
    torch.testing.assert_close(own['head.transformer.enc_out_class_embed.bias'],
                               sd['transformer.enc_out_class_embed.bias'][ids], rtol=0, atol=0)
    for ours, theirs in {
            'head.transformer.tgt_embed.weight': 'transformer.tgt_embed.weight',
            'head.transformer.decoder.ref_point_head.layers.1.weight':
                'transformer.decoder.ref_point_head.layers.1.weight',
            'head.transformer.decoder.norm.bias': 'transformer.decoder.norm.bias',
            'head.transformer.enc_out_bbox_embed.layers.2.weight':
                'transformer.enc_out_bbox_embed.layers.2.weight',
            'head.transformer.decoder.layers.0.cross_attn.sampling_offsets.weight':
                'transformer.decoder.layers.0.cross_attn.sampling_offsets.weight'}.items():
        torch.testing.assert_close(own[ours], sd[theirs], rtol=0, atol=0)


def test_detrex_dino_r50_loads_cleanly():
    """detectron2 ResNet names, detrex layer lists and one head per decoder layer + encoder."""
    sd = detrex_dino_r50(num_classes=80)
    converted = convert_dino({'model': sd, 'iteration': 0})
    model = densevit_detector('DINO', 80, share_pred_layers=False, pos_temperature=10000.0,
                              pos_offset=-0.5)
    own = assert_loads_cleanly(model, converted)
    for ours, theirs in {
            'backbone.model.model.conv1.weight': 'backbone.stem.conv1.weight',
            'backbone.model.model.bn1.running_mean': 'backbone.stem.conv1.norm.running_mean',
            'backbone.model.model.layer2.0.downsample.0.weight': 'backbone.res3.0.shortcut.weight',
            'backbone.model.model.layer2.0.downsample.1.bias': 'backbone.res3.0.shortcut.norm.bias',
            'backbone.model.model.layer4.2.conv3.weight': 'backbone.res5.2.conv3.weight',
            'backbone.model.model.layer4.2.bn2.weight': 'backbone.res5.2.conv2.norm.weight',
            'neck.lateral.s16.conv.weight': 'neck.convs.1.conv.weight',
            'neck.extra.s64.norm.weight': 'neck.extra_convs.0.norm.weight',
            'head.transformer.level_embed': 'transformer.level_embeds',
            'head.transformer.encoder.layers.0.norm2.weight':
                'transformer.encoder.layers.0.norms.1.weight',
            'head.transformer.encoder.layers.0.linear1.weight':
                'transformer.encoder.layers.0.ffns.0.layers.0.0.weight',
            'head.transformer.decoder.layers.1.self_attn.in_proj_weight':
                'transformer.decoder.layers.1.attentions.0.attn.in_proj_weight',
            'head.transformer.decoder.layers.1.cross_attn.value_proj.weight':
                'transformer.decoder.layers.1.attentions.1.value_proj.weight',
            # decoder norms follow the operation order self_attn, norm, cross_attn, norm, ffn, norm
            'head.transformer.decoder.layers.1.norm2.weight':
                'transformer.decoder.layers.1.norms.0.weight',
            'head.transformer.decoder.layers.1.norm1.weight':
                'transformer.decoder.layers.1.norms.1.weight',
            'head.transformer.decoder.layers.1.norm3.weight':
                'transformer.decoder.layers.1.norms.2.weight',
            'head.transformer.decoder.layers.0.linear2.bias':
                'transformer.decoder.layers.0.ffns.0.layers.1.bias',
            'head.class_embed.1.weight': 'class_embed.1.weight',
            'head.transformer.enc_out_class_embed.weight': f'class_embed.{DEC_LAYERS}.weight',
            'head.transformer.enc_out_bbox_embed.layers.0.bias':
                f'bbox_embed.{DEC_LAYERS}.layers.0.bias'}.items():
        torch.testing.assert_close(own[ours], sd[theirs], rtol=0, atol=0)
    # detrex's label_enc has num_classes rows; DINO's has one more
    torch.testing.assert_close(own['head.label_enc.weight'][:80], sd['label_enc.weight'],
                               rtol=0, atol=0)


def test_detrex_dino_vitdet_loads_into_the_vit_b_config():
    """detrex's dino-vitdet: backbone.net (ViT) + backbone.simfp_{3,4,5} (scale factors 2, 1, 0.5)
    with LastLevelMaxPool, then a ChannelMapper of four 1x1 convs (p3..p6). The pyramid goes
    through convert_vitdet; the model is configs/dino/dino-4scale_vit-b_coco-12e.py's, whose
    necks [SimpleFeaturePyramid, ChannelMapper] are neck.0 and neck.1, at this file's sizes."""
    dim, depth = 96, 3
    vitdet = {k: v for k, v in _detectron2_vitdet_state_dict(dim, depth, DIM).items()
              if k.startswith('backbone.') and not k.startswith('backbone.simfp_2.')}
    model = detrex_dino_transformer(num_classes=80)
    model.neck = nn.Module()
    model.neck.convs = nn.ModuleList(ConvNormAct(DIM, 1) for _ in range(4))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd.update(vitdet)
    converted = convert_dino(sd)

    cfg = load_config(osp.join(ROOT, 'configs/dino/dino-4scale_vit-b_coco-12e.py')).model
    cfg.backbone.update(embed_dim=dim, depth=depth, num_heads=3, global_attn_indexes=(depth - 1,))
    for neck in cfg.neck:
        neck.out_channels = DIM
    cfg.head.update(hidden_dim=DIM, num_heads=HEADS, num_encoder_layers=ENC_LAYERS,
                    num_decoder_layers=DEC_LAYERS, ffn_dim=FFN, num_queries=QUERIES,
                    enc_points=POINTS, dec_points=POINTS)
    detector = MODELS.build(cfg)
    assert [type(n) for n in detector.neck] == [SimpleFeaturePyramid, ChannelMapper]
    own = assert_loads_cleanly(detector, converted)
    for ours, theirs in {'backbone.blocks.2.attn.rel_pos_h': 'backbone.net.blocks.2.attn.rel_pos_h',
                         'neck.0.resample.s8.0.weight': 'backbone.simfp_3.0.weight',
                         'neck.0.lateral.s16.conv.weight': 'backbone.simfp_4.0.weight',
                         'neck.0.output.s32.norm.bias': 'backbone.simfp_5.2.norm.bias',
                         'neck.1.lateral.s8.conv.weight': 'neck.convs.0.conv.weight',
                         'neck.1.lateral.s64.norm.weight': 'neck.convs.3.norm.weight',
                         'head.class_embed.1.weight': 'class_embed.1.weight'}.items():
        torch.testing.assert_close(own[ours], sd[theirs], rtol=0, atol=0)


# ------------------------------------------------------------------------------ ImageNet ResNet
def _randomise_batch_norms(model: nn.Module, seed: int) -> None:
    """Distinct BN statistics and affine per layer, so a BN loaded into the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(shape, generator=g) + 0.5)
                module.weight.copy_(torch.rand(shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(shape, generator=g) * 0.1)


def detectron2_names(torchvision_state: dict) -> dict:
    """torchvision ResNet names -> detectron2's, as detectron2's
    tools/convert-torchvision-to-d2.py renames them for ImageNetPretrained/torchvision/R-50.pkl
    (stem.*, res{n}, conv{k}.norm, shortcut(.norm); the classifier becomes stem.fc)."""
    out = {}
    for key, value in torchvision_state.items():
        new = key if 'layer' in key else 'stem.' + key
        for stage in range(1, 5):
            new = new.replace(f'layer{stage}', f'res{stage + 1}')
        for index in range(1, 4):
            new = new.replace(f'bn{index}', f'conv{index}.norm')
        new = new.replace('downsample.0', 'shortcut').replace('downsample.1', 'shortcut.norm')
        out[new] = value.numpy()  # the .pkl holds numpy arrays
    return {'model': out, '__author__': 'torchvision', 'matching_heuristics': True}


@functools.lru_cache(maxsize=None)
def _timm_backbone() -> TimmBackbone:
    """TimmBackbone('resnet50') with every stage out (s4..s32); each test loads it whole."""
    return TimmBackbone(model_name='resnet50', out_indices=(1, 2, 3, 4))


@pytest.mark.parametrize('source', ['torchvision', 'timm', 'detectron2'])
def test_resnet_loads_into_timm_backbone_and_gives_the_same_features(source):
    """An ImageNet ResNet-50 made by torchvision or timm (or torchvision's in detectron2's names)
    fills TimmBackbone('resnet50') exactly and computes the maps of timm's ResNet-50 holding
    the same weights."""
    torch.manual_seed(0)
    reference = timm.create_model('resnet50') if source == 'timm' else \
        torchvision.models.resnet50()
    _randomise_batch_norms(reference, seed=1)
    state = reference.state_dict()
    converted = convert_resnet(detectron2_names(state) if source == 'detectron2' else state)
    assert not any('fc.' in k for k in converted)  # the classifier is dropped
    backbone = _timm_backbone()
    own = assert_loads_cleanly(backbone, converted)
    for name in ('conv1.weight', 'bn1.running_var', 'layer1.0.downsample.1.weight',
                 'layer3.5.bn2.bias', 'layer4.2.conv3.weight'):
        torch.testing.assert_close(own['model.model.' + name], state[name], rtol=0, atol=0)

    timm_model = timm.create_model('resnet50')  # torchvision's names are timm's
    timm_model.load_state_dict(state)
    x = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = timm_model.eval().forward_intermediates(x, indices=(1, 2, 3, 4),
                                                           intermediates_only=True)
        got = backbone.eval()(x)
    assert list(got) == ['s4', 's8', 's16', 's32']
    for feat, ref in zip(got.values(), expected):
        torch.testing.assert_close(feat, ref, rtol=0, atol=0)


def test_resnet_converter_names_what_it_cannot_read():
    state = torchvision.models.resnet18().state_dict()
    with pytest.raises(ValueError, match=r'ResNet checkpoint.*layer5\.0\.conv1\.weight'):
        convert_resnet(dict(state, **{'layer5.0.conv1.weight': torch.zeros(1)}))


# ------------------------------------------------------------------------- transformers
def _transformers():
    return pytest.importorskip('transformers')


def hub_names(state_dict: dict) -> dict:
    """transformers >= 5 in-memory names -> the names its Hub checkpoints were saved with (the
    reverse of conversion_mapping.py's 'deformable_detr' renamings)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace('model.backbone.model.', 'model.backbone.conv_encoder.model.')
        key = key.replace('.self_attn.o_proj.', '.self_attn.out_proj.')
        key = re.sub(r'layers\.(\d+)\.mlp\.fc([12])\.', r'layers.\1.fc\2.', key)
        out[key] = value
    return out


@functools.lru_cache(maxsize=None)
def transformers_model(two_stage: bool, with_box_refine: bool, use_timm_backbone: bool = True,
                       num_labels: int = 80):
    tf = _transformers()
    kwargs = dict(use_timm_backbone=True, backbone='resnet50') if use_timm_backbone else dict(
        use_timm_backbone=False,
        backbone_config=tf.ResNetConfig(out_features=['stage2', 'stage3', 'stage4']))
    config = tf.DeformableDetrConfig(
        use_pretrained_backbone=False, two_stage=two_stage, with_box_refine=with_box_refine,
        d_model=DIM, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, encoder_layers=ENC_LAYERS,
        decoder_layers=DEC_LAYERS, encoder_n_points=POINTS, decoder_n_points=POINTS,
        num_queries=QUERIES, two_stage_num_proposals=QUERIES, num_labels=num_labels, **kwargs)
    torch.manual_seed(0)
    return tf.DeformableDetrForObjectDetection(config).eval()


@pytest.mark.parametrize('two_stage,with_box_refine', [(False, False), (True, True)])
def test_transformers_deformable_detr_loads_cleanly(two_stage, with_box_refine):
    reference = transformers_model(two_stage, with_box_refine)
    sd = reference.state_dict()
    converted = convert_deformable_detr(sd)
    model = densevit_detector('DeformableDETR', 80, two_stage=two_stage,
                              with_box_refine=with_box_refine)
    own = assert_loads_cleanly(model, converted)
    # the Hub names give the same result
    from_hub = convert_deformable_detr(hub_names(sd))
    assert from_hub.keys() == converted.keys()
    assert all(torch.equal(from_hub[k], converted[k]) for k in converted)
    # q, k, v projections packed in that order
    layer = 'model.decoder.layers.1.self_attn.'
    torch.testing.assert_close(
        own['head.transformer.decoder.layers.1.self_attn.in_proj_weight'],
        torch.cat([sd[layer + f'{p}_proj.weight'] for p in 'qkv']), rtol=0, atol=0)
    for ours, theirs in {
            'head.transformer.decoder.layers.1.self_attn.out_proj.bias': layer + 'o_proj.bias',
            'head.transformer.decoder.layers.0.norm2.weight':
                'model.decoder.layers.0.self_attn_layer_norm.weight',
            'head.transformer.decoder.layers.0.norm1.weight':
                'model.decoder.layers.0.encoder_attn_layer_norm.weight',
            'head.transformer.decoder.layers.0.cross_attn.output_proj.weight':
                'model.decoder.layers.0.encoder_attn.output_proj.weight',
            'head.transformer.encoder.layers.0.linear2.weight':
                'model.encoder.layers.0.mlp.fc2.weight',
            'neck.extra.s64.conv.weight': 'model.input_proj.3.0.weight',
            'backbone.model.model.layer4.2.bn3.running_mean':
                'model.backbone.model.layer4.2.bn3.running_mean'}.items():
        torch.testing.assert_close(own[ours], sd[theirs], rtol=0, atol=0)


def test_transformers_resnet_backbone_gives_the_same_features():
    """transformers' own ResNet (embedder / encoder.stages names) converts to timm's names and
    computes the same maps as the reference's (frozen BN = eval-mode BN)."""
    reference = transformers_model(False, False, use_timm_backbone=False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # make the frozen BN statistics matter
        for name, buf in reference.model.backbone.named_buffers():
            if name.endswith(('running_mean', 'weight', 'bias')):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1 + name.endswith('weight'))
            elif name.endswith('running_var'):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    converted = convert_deformable_detr(reference.state_dict())
    model = densevit_detector('DeformableDETR', 80)
    assert_loads_cleanly(model, converted)
    x = torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        expected = [f for f, _ in reference.model.backbone(x, torch.ones(1, 64, 96))]
        got = model.eval().backbone(x)
    for name, feat in zip(('s8', 's16', 's32'), expected):
        scale = feat.abs().max()  # random weights: activations grow to hundreds by s32
        torch.testing.assert_close(got[name] / scale, feat / scale, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- the tool, errors
def test_convert_tool_loads_the_whole_detector(tmp_path, capsys):
    torch.save({'model': official_deformable_detr(91, True, True)}, tmp_path / 'ddetr.pth')
    config = tmp_path / 'ddetr.py'
    config.write_text(textwrap.dedent(f'''
        model = dict(
            type='Detector',
            backbone=dict(type='TimmBackbone', model_name='resnet50', out_indices=(2, 3, 4)),
            neck=dict(type='ChannelMapper', in_features=('s8', 's16', 's32'),
                      out_channels={DIM}, num_extra_levels=1),
            head=dict(type='DeformableDETR', num_classes=80, hidden_dim={DIM}, num_heads={HEADS},
                      num_encoder_layers={ENC_LAYERS}, num_decoder_layers={DEC_LAYERS},
                      ffn_dim={FFN}, num_queries={QUERIES}, enc_points={POINTS},
                      dec_points={POINTS}, two_stage=True, with_box_refine=True,
                      criterion=dict(type='SetCriterion', enc_class_agnostic=True,
                                     matcher=dict(type='HungarianMatcher'))))
    '''))
    report = convert_main(['deformable_detr', str(tmp_path / 'ddetr.pth'),
                           str(tmp_path / 'out.pth'), '--config', str(config)])
    assert report.clean and not report.resized, str(report)
    assert 'missing keys (0)' in capsys.readouterr().out


def test_errors_name_the_layout_and_the_keys():
    with pytest.raises(ValueError, match=r"not a Deformable DETR checkpoint.*'foo.weight'"):
        convert_deformable_detr({'foo.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match=r'not a DINO checkpoint'):
        convert_dino({'transformer.level_embed': torch.zeros(1)})
    sd = official_dino(num_classes=91, dn_labelbook_size=91)
    swin = {k: v for k, v in sd.items() if not k.startswith('backbone.')}
    swin['backbone.0.layers.0.blocks.0.attn.qkv.weight'] = torch.zeros(3, 1)
    with pytest.raises(ValueError, match=r'backbone\.0\.layers\.0\.blocks\.0\.attn\.qkv'):
        convert_dino(swin)
    extra = dict(sd, **{'transformer.two_stage_wh_embedding.weight': torch.zeros(1, 2)})
    converted = convert_dino(extra)  # kept under the head's name, reported unexpected on load
    assert 'head.transformer.two_stage_wh_embedding.weight' in converted
    with pytest.raises(ValueError, match=r'detrex.*neck\.foo'):
        convert_dino(dict(detrex_dino_r50(80), **{'neck.foo.weight': torch.zeros(1)}))
    body = {k: v for k, v in official_deformable_detr(91, False, False).items()}
    body['backbone.0.body.layer5.0.conv1.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'layer5.*only ResNet backbones'):
        convert_deformable_detr(body)
