"""Every config under configs/ loads with mmengine, its model builds from the densevit registry
as the published architecture (parameter counts against timm, segment-anything, torchvision and
transformers; the dataset's classes; the method's strides), and one data_root setting moves
every dataset path."""
from __future__ import annotations

import glob
import importlib
import os.path as osp
from typing import Callable

import pytest
import timm
import torch
import torchvision
from mmengine.config import Config
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT

from densevit.apis.config import load_config
from densevit.registry import DATASETS, MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p.split(osp.sep))
SEG_CONFIGS = [p for p in CONFIGS if osp.basename(osp.dirname(p)) in ('upernet', 'segmenter')]


def _name(path: str) -> str:
    return osp.relpath(path, osp.join(ROOT, 'configs'))


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_segmentation_configs_exist():
    names = {osp.basename(p) for p in SEG_CONFIGS}
    for expected in ('upernet_swin-t_ade20k-512x512-160k.py',
                     'upernet_swin-b_ade20k-512x512-160k.py',
                     'upernet_dinat-t_ade20k-512x512-160k.py',
                     'upernet_dinat-b_ade20k-512x512-160k.py',
                     'upernet_vit-b_ade20k-512x512-160k.py',
                     'segmenter-linear_vit-s_ade20k-512x512-160k.py',
                     'segmenter-mask_vit-b_ade20k-512x512-160k.py'):
        assert expected in names


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_loads_and_data_root_switches_every_path(path):
    cfg = Config.fromfile(path)
    assert 'model' in cfg, f'{_name(path)} defines no model'
    if 'data_root' not in cfg:
        return
    old = cfg.data_root
    new = '/elsewhere/dataset/'
    switched = load_config(path, {'data_root': new})
    leftovers = [s for s in _strings(switched.to_dict()) if old in s and s != new]
    assert not leftovers, f'paths still under {old}: {leftovers}'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if switched.get(loader) is not None:  # an evaluation-only config has no train loader
            assert switched[loader].dataset.data_root.startswith(new)


# ---------------------------------------------------------------- published architectures
# Each config's backbone against the same architecture as another package builds it (parameter
# counts on the meta device, no weights): timm's named models, segment-anything's encoder and
# builders, torchvision's ResNets, transformers' DiNAT. What densevit adds or drops on purpose is
# added or dropped here by name.

def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _timm_swin(name: str, levels: tuple[int, ...]) -> int:
    """timm's Swin without its classification norm, plus the LayerNorm on each returned level
    that the detection / segmentation Swin adds (mmseg's ``norm{i}``)."""
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=0)
    return (_count(model) - _count(model.norm)
            + sum(2 * model.feature_info[i]['num_chs'] for i in levels))


# the DiNAT models of the paper (Hassani & Shi, 2022) as the official classification code defines
# them (dinat_tiny, dinat_base); kernel 7 everywhere
DINAT_PRESETS = {
    'tiny': dict(embed_dim=64, depths=[3, 4, 18, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0),
    'base': dict(embed_dim=128, depths=[3, 4, 18, 5], num_heads=[4, 8, 16, 32], mlp_ratio=2.0,
                 layer_scale_init_value=1e-5),
}


def _transformers_dinat(arch: str, levels: tuple[int, ...]) -> int:
    """transformers' ``DinatBackbone`` (a LayerNorm on each returned level, as densevit's)."""
    transformers = pytest.importorskip('transformers')
    with pytest.MonkeyPatch.context() as patch:
        try:  # transformers imports natten 0.14's functions by name, which newer natten lacks;
            # they are only called in forward, and only parameters are counted here
            import natten.functional
            for name in ('natten2dav', 'natten2dqkrpb'):
                patch.setattr(natten.functional, name, None, raising=False)
        except ImportError:
            pass
        modeling = importlib.import_module('transformers.models.dinat.modeling_dinat')
    preset = DINAT_PRESETS[arch]
    config = transformers.DinatConfig(
        **preset, kernel_size=7, dilations=[[1] * d for d in preset['depths']],
        out_features=[f'stage{i + 1}' for i in levels])
    with torch.device('meta'):
        return _count(modeling.DinatBackbone(config))


def _timm_vit(name: str, img_size: int) -> int:
    """timm's ViT (class token, position embedding at ``img_size``, final norm), no head."""
    with torch.device('meta'):
        return _count(timm.create_model(name, img_size=img_size, num_classes=0))


def _sam_encoder(*, neck: bool, pos_grid_from: str | None = None, **kwargs) -> int:
    """segment-anything's ``ImageEncoderViT``, with or without its neck. ViTDet keeps the
    pretraining position grid, not one at the input size: with ``pos_grid_from``, that timm
    model's grid (without its class-token slot) replaces the encoder's."""
    with torch.device('meta'):
        encoder = ImageEncoderViT(qkv_bias=True, **kwargs)
        total = _count(encoder) - (0 if neck else _count(encoder.neck))
        if pos_grid_from is not None:
            total += timm.create_model(pos_grid_from).pos_embed[:, 1:].numel() \
                - encoder.pos_embed.numel()
    return total


def _sam(kind: str) -> int:
    """segment-anything's whole model: image encoder with neck, prompt encoder, mask decoder."""
    with torch.device('meta'):
        return _count(sam_model_registry[kind]())


def _torchvision_resnet(name: str) -> int:
    model = getattr(torchvision.models, name)()
    return _count(model) - _count(model.fc)


_VITDET_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11),
                 use_rel_pos=True, neck=False, pos_grid_from='vit_base_patch16_224')
_QUICK_VIT = dict(patch_size=8, img_size=128, embed_dim=192, num_heads=3, window_size=0,
                  global_attn_indexes=(), use_rel_pos=False, neck=False)
# config -> (the part of the densevit model counted, the reference count)
ARCHITECTURES: dict[str, tuple[str, Callable[[], int]]] = {
    'backbones/vit-b_sam-encoder.py': ('model', lambda: _sam_encoder(
        img_size=1024, embed_dim=768, depth=12, num_heads=12, window_size=14,
        global_attn_indexes=(2, 5, 8, 11), use_rel_pos=True, neck=True)),
    'deformable_detr/deformable-detr-refine-twostage_r50_coco-50e.py': (
        'backbone', lambda: _torchvision_resnet('resnet50')),
    'detr/detr_r50_coco-500e.py': ('backbone', lambda: _torchvision_resnet('resnet50')),
    'dino/dino-4scale_dinat-t_coco-12e.py': ('backbone', lambda: _transformers_dinat(
        'tiny', (1, 2, 3))),
    'dino/dino-4scale_r50_coco-12e.py': ('backbone', lambda: _torchvision_resnet('resnet50')),
    'dino/dino-4scale_swin-t_coco-12e.py': ('backbone', lambda: _timm_swin(
        'swin_tiny_patch4_window7_224', (1, 2, 3))),
    'dino/dino-4scale_vit-b_coco-12e.py': ('backbone', lambda: _sam_encoder(
        img_size=1024, window_size=14, **_VITDET_B)),
    'dino/dino-4scale_vit-b_coco-50e.py': ('backbone', lambda: _sam_encoder(
        img_size=1024, window_size=14, **_VITDET_B)),
    'dino/dino-mask_r50_coco-lsj-1024-50e.py': (
        'backbone', lambda: _torchvision_resnet('resnet50')),
    'quickstart/dino_vit-tiny_coco.py': ('backbone', lambda: _sam_encoder(depth=4, **_QUICK_VIT)),
    'quickstart/sam_vit-tiny_coco.py': ('backbone', lambda: _sam_encoder(depth=4, **_QUICK_VIT)),
    'quickstart/segmenter-linear_vit-tiny_ade20k.py': (
        'backbone', lambda: _sam_encoder(depth=6, **_QUICK_VIT)),
    'quickstart/upernet_resnet18_ade20k.py': ('backbone', lambda: _torchvision_resnet('resnet18')),
    'sam/sam_vit-b.py': ('model', lambda: _sam('vit_b')),
    'sam/sam_vit-b_coco-finetune.py': ('model', lambda: _sam('vit_b')),
    'sam/sam_vit-h.py': ('model', lambda: _sam('vit_h')),
    'sam/sam_vit-l.py': ('model', lambda: _sam('vit_l')),
    'segmenter/segmenter-linear_vit-b_ade20k-512x512-160k.py': (
        'backbone', lambda: _timm_vit('vit_base_patch16_384', 512)),
    'segmenter/segmenter-linear_vit-s_ade20k-512x512-160k.py': (
        'backbone', lambda: _timm_vit('vit_small_patch16_384', 512)),
    'segmenter/segmenter-mask_vit-b_ade20k-512x512-160k.py': (
        'backbone', lambda: _timm_vit('vit_base_patch16_384', 512)),
    'segmenter/segmenter-mask_vit-s_ade20k-512x512-160k.py': (
        'backbone', lambda: _timm_vit('vit_small_patch16_384', 512)),
    'upernet/upernet_dinat-b_ade20k-512x512-160k.py': (
        'backbone', lambda: _transformers_dinat('base', (0, 1, 2, 3))),
    'upernet/upernet_dinat-t_ade20k-512x512-160k.py': (
        'backbone', lambda: _transformers_dinat('tiny', (0, 1, 2, 3))),
    'upernet/upernet_swin-b_ade20k-512x512-160k.py': ('backbone', lambda: _timm_swin(
        'swin_base_patch4_window7_224', (0, 1, 2, 3))),
    'upernet/upernet_swin-t_ade20k-512x512-160k.py': ('backbone', lambda: _timm_swin(
        'swin_tiny_patch4_window7_224', (0, 1, 2, 3))),
    'upernet/upernet_vit-b_ade20k-512x512-160k.py': ('backbone', lambda: _sam_encoder(
        img_size=512, window_size=16, **_VITDET_B)),
}
# the strides of the maps that feed the head, as each method publishes them: UperNet s4-s32,
# Segmenter one s16 map, the 4-scale DETRs s8-s64 (Mask DINO adds s4 for its masks), DETR s32,
# SAM's s16 image embedding
FEED_STRIDES = {'upernet': (4, 8, 16, 32), 'segmenter': (16,), 'dino-4scale': (8, 16, 32, 64),
                'deformable-detr': (8, 16, 32, 64), 'dino-mask': (4, 8, 16, 32, 64),
                'detr': (32,), 'sam': (16,)}


def _published_method(path: str) -> str | None:
    if osp.basename(osp.dirname(path)) == 'quickstart':
        return None  # small CPU recipes, not a published model
    stem = osp.basename(path)
    return next((m for m in FEED_STRIDES if stem.startswith(m + '_') or stem.startswith(m + '-')),
                None)


def test_every_config_has_a_reference_architecture():
    assert sorted(ARCHITECTURES) == sorted(
        _name(p) for p in CONFIGS if Config.fromfile(p).model.type != 'PromptedInstanceSegmenter')
    published = [p for p in CONFIGS if osp.basename(osp.dirname(p)) not in ('quickstart',
                                                                            'backbones')]
    assert all(_published_method(p) for p in published), [
        _name(p) for p in published if not _published_method(p)]


def _classes(cfg) -> int:
    """The class count of the config's dataset (its label space, not the head's)."""
    loader = next(cfg[key] for key in ('train_dataloader', 'val_dataloader', 'test_dataloader')
                  if cfg.get(key) is not None)
    return len(DATASETS.get(loader.dataset.type).METAINFO['classes'])


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_model_builds_the_published_architecture(path):
    """Full-size models (no weights loaded): the backbone (or the whole SAM) has the parameter
    count of the same architecture built by timm / segment-anything / torchvision /
    transformers; every head predicts the dataset's classes; the maps feeding the head have the
    method's strides; a Segmentor's logits on a 64x64 image come at its finest input's stride."""
    cfg = Config.fromfile(path)
    torch.manual_seed(0)
    if cfg.model.type == 'PromptedInstanceSegmenter':  # its parts' weights come from training
        cfg.model.detector_checkpoint = cfg.model.segmenter_checkpoint = None
        model = MODELS.build(cfg.model)
        assert model.detector.num_classes == _classes(cfg) == 80
        return
    model = MODELS.build(cfg.model).eval()
    part, reference = ARCHITECTURES[_name(path)]
    counted = model if part == 'model' else getattr(model, part)
    assert _count(counted) == reference(), f'{part} parameters differ from the reference'

    neck = getattr(model, 'neck', None)
    if isinstance(neck, torch.nn.ModuleList):  # a neck chain: the last one feeds the head
        neck = neck[-1]
    feed = (neck if neck is not None else model.backbone).out_features
    method = _published_method(path)
    if method is not None:
        assert tuple(sorted(spec.stride for spec in feed.values())) == FEED_STRIDES[method]

    if cfg.model.type == 'Detector':
        assert model.num_classes == model.head.num_classes == _classes(cfg)
    if cfg.model.type != 'Segmentor':
        return
    classes = _classes(cfg)
    assert [h.num_classes for h in [model.decode_head, *model.auxiliary_heads]] == \
        [classes] * (1 + len(model.auxiliary_heads))
    finest = min(feed[name].stride for name in model.decode_head.in_features)
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64), mode='tensor')
    assert tuple(logits.shape) == (1, classes, 64 // finest, 64 // finest)
    if path in SEG_CONFIGS:
        ckpt = cfg.model.get('backbone_checkpoint')
        assert ckpt and ckpt.startswith('checkpoints/'), 'published configs name their weights'


UPERNET_CONFIGS = [p for p in SEG_CONFIGS if osp.basename(p).startswith('upernet_')]


@pytest.mark.parametrize('path', UPERNET_CONFIGS, ids=_name)
def test_upernet_configs_follow_mmseg_recipe(path):
    """mmseg's UperNet recipe, value by value: SyncBN in both heads, cross-entropy averaged over
    all pixels (avg_non_ignore=False), training batches padded to the 512 crop after
    normalisation (the pipeline's RandomCrop does not pad)."""
    cfg = Config.fromfile(path)
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        assert head.norm_layer == 'SyncBN'
        assert head.loss_decode.avg_non_ignore is False
    assert tuple(cfg.model.data_preprocessor.size) == (512, 512) == tuple(cfg.crop_size)
    assert cfg.model.data_preprocessor.get('pad_val', 0.0) == 0.0  # the normalised mean
    assert cfg.model.data_preprocessor.seg_pad_val == 255
    steps = [step['type'] for step in cfg.train_dataloader.dataset.pipeline]
    assert 'Pad' not in steps and steps.index('RandomCrop') < steps.index('PhotoMetricDistortion')
    header = open(path).read().split('\n_base_')[0]
    assert 'Target:' in header and 'convert_checkpoint.py' in header


def test_vit_b_upernet_window_tiles_its_map_and_follows_mae():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/upernet/upernet_vit-b_ade20k-512x512-160k.py'))
    backbone = cfg.model.backbone
    grid = 512 // 16  # tokens per side of a 512 crop at patch 16
    assert grid % backbone.window_size == 0 and backbone.window_size == 16
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05  # MAE's fine-tuning
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65
    assert tuple(cfg.optim_wrapper.paramwise_cfg.no_decay) == ('norm', 'pos_embed')  # ViTDet
    header = open(cfg.filename).read().split('\n_base_')[0]
    assert 'Recipe:' in header and 'Window 16' in header
