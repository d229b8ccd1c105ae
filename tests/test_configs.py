"""Every config under configs/ loads with mmengine, its model builds from the densevit registry
and runs on a tiny input, and one data_root setting moves every dataset path."""
from __future__ import annotations

import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from densevit.apis.config import load_config
from densevit.registry import MODELS

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


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_config_model_builds_and_runs(path):
    """Full-size models (no weights loaded); one forward on a 64x64 image."""
    cfg = Config.fromfile(path)
    torch.manual_seed(0)
    if cfg.model.type == 'PromptedInstanceSegmenter':  # its parts' weights come from training
        cfg.model.detector_checkpoint = cfg.model.segmenter_checkpoint = None
    model = MODELS.build(cfg.model).eval()
    if cfg.model.type != 'Segmentor':
        return
    assert model.num_classes == 150
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64), mode='tensor')
    assert logits.shape[:2] == (1, 150)
    stride = 64 // logits.shape[-1]
    assert stride in (4, 8, 16)
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
