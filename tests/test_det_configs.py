"""The published detection configs (configs/dino, configs/deformable_detr, configs/detr) follow
their recipes: each loads and moves every path with data_root; its model builds with the head,
loss weights and parameter count the paper / repository publishes; its optimiser gets the
published learning rates, multipliers, weight decay and clipping, and its schedule the
published length and lr drops; its ResNet freezes BatchNorm and early stages as the official
code does; its backbone weights load at init_weights from a converted file (building the model
reads no file); its pipelines run on the synthetic COCO stand-in; its header states the number
it targets, the recipe and how to get the weights. RECIPES below is the transcription of the
official configs (see each config's header for the source files).
"""
from __future__ import annotations

import functools
import glob
import os.path as osp
import re

import numpy as np
import pytest
import torch
import torchvision
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper

from densevit.apis.config import load_config
from densevit.checkpoint import converters, load_state_dict
from densevit.checkpoint.resnet import convert_resnet
from densevit.registry import DATASETS, MODELS

from .conftest import ROOT

FAMILIES = ('dino', 'deformable_detr', 'detr')
CONFIGS = sorted(p for family in FAMILIES
                 for p in glob.glob(osp.join(ROOT, 'configs', family, '*.py')))

_DETR_SCALES = tuple(range(480, 801, 32))
_DINO = dict(head='DINO', necks=('ChannelMapper',), queries=900, enc=6, dec=6, ffn=2048,
             masks=False, weights=dict(cls=1.0, bbox=5.0, giou=2.0), costs=(2.0, 5.0, 2.0),
             max_per_img=300, aug='detr', lr=1e-4, wd=1e-4, clip=0.1, norm_decay=1.0)
_DETREX = dict(_DINO, pos=(10000.0, -0.5), box_noise=1.0, shared=False, norm_decay=0.0,
               loop=('iter', 90000, [82500]), batch=2, filter_empty=True)
# detrex's ViTDet DINO: the pyramid belongs to its backbone (lr x0.1), the ChannelMapper does not
_VITDET_NECKS = dict(necks=('SimpleFeaturePyramid', 'ChannelMapper'),
                     neck_mult={'neck.0.': 0.1, 'neck.1.': 1.0})
RECIPES = {
    'dino/dino-4scale_r50_coco-12e.py': dict(
        _DINO, box_ap=49.0, params=47, pos=(20.0, 0.0), box_noise=0.4, shared=True,
        loop=('epoch', 12, [11]), batch=2, frozen_bn=True, frozen_stem=True,
        filter_empty=False),
    'dino/dino-4scale_swin-t_coco-12e.py': dict(_DETREX, box_ap=51.3),
    'dino/dino-4scale_vit-b_coco-12e.py': dict(_DETREX, box_ap=50.2, **_VITDET_NECKS),
    'dino/dino-4scale_vit-b_coco-50e.py': dict(
        _DETREX, box_ap=55.0, loop=('iter', 375000, [300000]), **_VITDET_NECKS),
    'dino/dino-4scale_dinat-t_coco-12e.py': dict(_DETREX, box_ap=None),
    'dino/dino-mask_r50_coco-lsj-1024-50e.py': dict(
        _DINO, box_ap=51.7, mask_ap=46.3, params=52, queries=300, dec=9, masks=True,
        weights=dict(cls=4.0, bbox=5.0, giou=2.0, mask=5.0, dice=5.0), costs=(4.0, 5.0, 2.0),
        pos=(10000.0, 0.0), box_noise=0.4, label_noise=0.2, shared=True, max_per_img=100,
        aug='lsj', wd=0.05, clip=0.01, norm_decay=0.0, loop=('iter', 368750, [327778, 355092]),
        batch=2, filter_empty=True, frozen_bn=True, frozen_stem=False),  # FREEZE_AT 0
    'deformable_detr/deformable-detr-refine-twostage_r50_coco-50e.py': dict(
        head='DeformableDETR', necks=('ChannelMapper',), box_ap=46.9, params=41, queries=300,
        enc=6, dec=6, ffn=1024, masks=False, weights=dict(cls=2.0, bbox=5.0, giou=2.0),
        costs=(2.0, 5.0, 2.0), max_per_img=100, aug='detr', lr=2e-4, wd=1e-4, clip=0.1,
        norm_decay=1.0, loop=('epoch', 50, [40]), batch=2, frozen_bn=True, frozen_stem=True,
        filter_empty=False, offsets_mult=0.1),
    'detr/detr_r50_coco-500e.py': dict(
        head='DETR', necks=(), box_ap=42.0, params=41, queries=100, enc=6, dec=6, ffn=2048,
        masks=False, weights=dict(cls=1.0, bbox=5.0, giou=2.0), costs=(1.0, 5.0, 2.0),
        max_per_img=100, aug='detr', lr=1e-4, wd=1e-4, clip=0.1, norm_decay=1.0,
        loop=('epoch', 500, [400]), batch=4, frozen_bn=True, frozen_stem=True,
        filter_empty=False),
}


@functools.lru_cache(maxsize=None)
def _converted_resnet50() -> dict[str, torch.Tensor]:
    """torchvision's ResNet-50 (random weights) through the ``resnet`` converter, as the R50
    configs' headers have the ImageNet file converted."""
    return convert_resnet(torchvision.models.resnet50().state_dict())


def _name(path: str) -> str:
    return osp.relpath(path, osp.join(ROOT, 'configs'))


def _load(path: str, data_root: str | None = None):
    return load_config(path, {'data_root': data_root} if data_root else None)


def _header(path: str) -> str:
    lines = []
    with open(path) as f:
        for line in f:
            if not line.startswith('#'):
                break
            lines.append(line[1:].strip())
    return ' '.join(lines)


def test_every_detection_config_has_a_recipe():
    assert sorted(_name(p) for p in CONFIGS) == sorted(RECIPES)


# ------------------------------------------------------------------------------ headers

@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_header_states_number_recipe_and_weights(path):
    header, recipe = _header(path), RECIPES[_name(path)]
    assert 'Target:' in header and 'Recipe' in header, 'header needs Target: and Recipe lines'
    target = header.split('Target:', 1)[1].split('Recipe', 1)[0]
    if recipe['box_ap'] is None:
        assert 'none published' in target.lower()
    else:
        assert f'{recipe["box_ap"]:.1f} box AP' in target
    if recipe.get('mask_ap') is not None:
        assert f'{recipe["mask_ap"]:.1f} mask AP' in target
    assert re.search(r'\d+(\.\d+)? (mask|box) AP', header)
    # the recipe line names the schedule, the optimiser, the batch and the augmentation
    body = header.split('Recipe', 1)[1]
    assert re.search(r'\d+ (epochs|iterations)|\d+k iterations', body)
    assert 'lr' in body and 'batch' in body and ('x0.1' in body or 'layer decay' in body)
    if recipe['aug'] == 'detr':
        assert 'multi-scale augmentation' in body
    else:
        assert 'large-scale jitter' in body and 'multi-scale augmentation' not in body
    # weights: a converter command with a registered kind, or an explicit "no conversion"
    kinds = re.findall(r'python tools/convert_checkpoint\.py (\w+) ', header)
    assert set(kinds) <= set(converters()), f'unknown converter kinds {kinds}'
    cfg = _load(path)
    # backbone weights load at init_weights (when training starts), never when the model is built
    assert not cfg.model.backbone.get('checkpoint_path') and \
        not cfg.model.backbone.get('pretrained'), 'building the model must read no file'
    ckpt = cfg.model.get('backbone_checkpoint')
    assert ckpt and ckpt.startswith('checkpoints/'), 'published configs name their weights'
    # the command writes the file the config reads
    assert re.search(r'convert_checkpoint\.py \w+ \S+ \\? ?' + re.escape(ckpt), header), \
        f'no converter command in the header writes {ckpt}'
    if cfg.model.backbone.type == 'TimmBackbone':
        assert 'convert_checkpoint.py resnet resnet50-0676ba61.pth' in header
    if 'Deviation' in header:  # deviations are named, not hidden
        assert re.search(r'Deviations?:', header)


# ------------------------------------------------------------------------------ config fields

@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_data_root_switches_every_path_and_fields_follow_the_recipe(path):
    recipe, cfg = RECIPES[_name(path)], _load(path)
    new = '/elsewhere/coco/'
    switched = load_config(path, {'data_root': new})
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert switched[loader].dataset.data_root == new
    assert switched.val_evaluator.ann_file == new + 'annotations/instances_val2017.json'
    assert set(switched.val_evaluator.metric) == ({'bbox', 'segm'} if recipe['masks']
                                                  else {'bbox'})
    # schedule: epochs or iterations, and the lr drops
    kind, length, drops = recipe['loop']
    if kind == 'epoch':
        assert cfg.train_cfg.type == 'EpochBasedTrainLoop' and cfg.train_cfg.max_epochs == length
    else:
        assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == length
    (scheduler,) = cfg.param_scheduler
    assert scheduler.type == 'MultiStepLR' and scheduler.milestones == drops
    assert scheduler.gamma == 0.1 and scheduler.by_epoch == (kind == 'epoch')
    assert scheduler.end == length
    # data
    train = cfg.train_dataloader
    assert train.batch_size == recipe['batch']
    assert train.dataset.filter_cfg.filter_empty_gt == recipe['filter_empty']
    types = [t['type'] for t in train.dataset.pipeline]
    assert types[:3] == ['LoadImageFromFile', 'LoadAnnotations', 'ClipBoxes']
    if recipe['aug'] == 'detr':
        assert types[3:] == ['RandomFlip', 'RandomChoice', 'PackDetInputs']
        plain, cropped = train.dataset.pipeline[4]['transforms']
        assert plain == [dict(type='RandomChoiceResize', scales=list(_DETR_SCALES),
                              max_size=1333)]
        assert cropped == [dict(type='RandomChoiceResize', scales=[400, 500, 600]),
                           dict(type='RandomSizeCrop', min_size=384, max_size=600), plain[0]]
    else:
        assert types[3:] == ['RandomFlip', 'LargeScaleJitter', 'PackDetInputs']
        lsj = train.dataset.pipeline[4]
        assert tuple(lsj['scale']) == (1024, 1024) and tuple(lsj['ratio_range']) == (0.1, 2.0)
        # LSJ does not pad; the training batch is padded to the square after normalisation
        assert tuple(cfg.model.data_preprocessor.size) == (1024, 1024)
    resize = cfg.val_dataloader.dataset.pipeline[1]
    assert resize == dict(type='RandomChoiceResize', scales=[800], max_size=1333)


# ------------------------------------------------------------------------------ model + optimiser

@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_model_and_optimiser_follow_the_recipe(path):
    """Full-size model (about 1-3 s to build, no weights loaded)."""
    recipe, cfg = RECIPES[_name(path)], _load(path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    head = model.head
    assert type(head).__name__ == recipe['head']
    assert head.num_classes == 80 and head.num_queries == recipe['queries']
    assert len(head.transformer.encoder.layers) == recipe['enc']
    assert len(head.transformer.decoder.layers) == recipe['dec']
    for layer in (head.transformer.encoder.layers[0], head.transformer.decoder.layers[0]):
        assert layer.linear1.in_features == 256  # hidden dim
        assert layer.linear1.out_features == recipe['ffn']
    assert head.with_masks == recipe['masks']
    assert model.test_cfg['max_per_img'] == recipe['max_per_img']
    criterion = head.criterion
    for name, weight in recipe['weights'].items():
        assert criterion.weights[name] == weight, name
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == recipe['costs']
    if recipe['masks']:
        assert (matcher.cost_mask, matcher.cost_dice) == (5.0, 5.0)
        assert criterion.num_points == matcher.num_points == 12544
    if recipe['head'] == 'DINO':
        assert (head.pos_temperature, head.pos_offset) == recipe['pos']
        assert head.num_dn == 100 and head.dn_box_noise_scale == recipe['box_noise']
        assert head.dn_label_noise_ratio == recipe.get('label_noise', 0.5)
        assert (head.class_embed[0] is head.class_embed[1]) == recipe['shared']
    if recipe['head'] == 'DeformableDETR':
        assert head.with_box_refine and head.two_stage
    if 'params' in recipe:  # the papers round to 1M
        total = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(total - recipe['params']) < 0.7, f'{total:.2f}M parameters'

    # optimiser: one mmengine param group per parameter
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    assert type(wrapper.optimizer).__name__ == 'AdamW'
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=recipe['clip'], norm_type=2)
    lr, wd = recipe['lr'], recipe['wd']

    params = dict(model.named_parameters())

    def lr_wd(name):
        group = groups[id(params[name])]
        return pytest.approx(group['lr']), pytest.approx(group['weight_decay'])

    ndim = {n: p.ndim for n, p in model.named_parameters()}
    assert lr_wd('head.transformer.decoder.layers.0.linear1.weight') == (lr, wd)
    deepest = [n for n in ndim if n.startswith('backbone.') and ndim[n] > 1][-1]
    assert lr_wd(deepest) == (0.1 * lr, wd)
    if recipe.get('frozen_bn'):  # FrozenBatchNorm2d: running statistics, affine not trained
        model.train()
        norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and not any(m.training for m in norms)
        assert not any(p.requires_grad for m in norms for p in m.parameters())
        # the stem and layer1 train unless the recipe freezes them (DETR: layer2..4 only)
        for name in ('conv1.weight', 'layer1.0.conv1.weight', 'layer1.2.conv3.weight'):
            assert params['backbone.model.model.' + name].requires_grad != recipe['frozen_stem']
        assert params['backbone.model.model.layer2.0.conv1.weight'].requires_grad
        assert lr_wd('backbone.model.model.layer2.0.conv1.weight') == (0.1 * lr, wd)
    if cfg.model.backbone.type == 'TimmBackbone':  # what init_weights loads fills the backbone
        report = load_state_dict(model.backbone, _converted_resnet50(), log=False)
        assert report.clean and not report.resized, str(report)
    if recipe.get('offsets_mult'):
        name = 'head.transformer.encoder.layers.0.self_attn.sampling_offsets.weight'
        assert lr_wd(name) == (0.1 * lr, wd)
    necks = [] if model.neck is None else \
        list(model.neck) if isinstance(model.neck, torch.nn.ModuleList) else [model.neck]
    assert [type(neck).__name__ for neck in necks] == list(recipe['necks'])
    for prefix, mult in recipe.get('neck_mult', {'neck.': 1.0} if necks else {}).items():
        neck_convs = [n for n in ndim if n.startswith(prefix) and ndim[n] == 4]
        assert neck_convs, prefix
        for name in neck_convs[:2]:
            assert lr_wd(name) == (mult * lr, wd), name
    head_norms = [n for n, m in model.head.named_modules()
                  if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))]
    assert head_norms
    for name in head_norms[:3]:
        assert lr_wd(f'head.{name}.weight') == (lr, wd * recipe['norm_decay'])
    if recipe['masks']:
        assert lr_wd('head.label_enc.weight') == (lr, 0.0)
        assert lr_wd('head.transformer.tgt_embed.weight') == (lr, 0.0)


# ------------------------------------------------------------------------------ data

def _check_boxes(sample):
    gt = sample.gt_instances
    h, w = sample.metainfo['img_shape']
    boxes = gt.bboxes
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
    if 'masks' in gt:
        for box, mask in zip(boxes, gt.masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert torch.allclose(box, tight, atol=1.0)


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_pipelines_run_on_the_stand_in(path, coco_root):
    recipe, cfg = RECIPES[_name(path)], _load(path, coco_root)
    train = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(train.metainfo['classes']) == 80
    for index in range(3):
        np.random.seed(index)
        item = train[index]
        sample = item['data_samples']
        h, w = sample.metainfo['img_shape']
        assert tuple(item['inputs'].shape[1:]) == sample.metainfo['pad_shape']
        if recipe['aug'] == 'detr':  # short side one of 480..800, long side at most 1333
            assert min(h, w) in _DETR_SCALES or max(h, w) == 1333, (h, w)
            assert max(h, w) <= 1333
        else:
            assert tuple(item['inputs'].shape[1:]) == (1024, 1024)
        assert ('masks' in sample.gt_instances) == recipe['masks']
        _check_boxes(sample)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    item = val[0]
    h, w = item['data_samples'].metainfo['img_shape']
    assert min(h, w) == 800 or max(h, w) == 1333


# ------------------------------------------------------------------------------ one step

# configs that only change the schedule share their model: step each model once
_MODELS = {}
for _path in CONFIGS:
    _MODELS.setdefault(repr(Config.fromfile(_path).model), _path)


@pytest.mark.slow
@pytest.mark.parametrize('path', sorted(_MODELS.values()), ids=_name)
def test_one_training_step_on_the_stand_in(path, coco_root):
    """The full model's losses on a stand-in image (pipeline shrunk to 256 px), all finite, and
    gradients reach the backbone's trained part."""
    cfg = _load(path, coco_root)
    pipeline = cfg.train_dataloader.dataset.pipeline
    for step in pipeline:
        if step['type'] == 'RandomChoice':
            step['transforms'] = [[dict(type='RandomChoiceResize', scales=[256], max_size=400)]]
        elif step['type'] == 'LargeScaleJitter':
            step.update(scale=(256, 256), ratio_range=(1.0, 1.0))
            cfg.model.data_preprocessor.size = (256, 256)  # the square LSJ batches are padded to
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    torch.manual_seed(0)
    np.random.seed(0)
    model = MODELS.build(cfg.model).train()
    data = model.data_preprocessor(pseudo_collate([dataset[0]]), True)
    losses = model(**data, mode='loss')
    assert 'loss_cls' in losses and 'loss_giou' in losses and 'd0.loss_bbox' in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for n, p in model.named_parameters()
             if n.startswith('backbone.') and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
