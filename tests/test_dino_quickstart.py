"""The quickstart DINO (plain ViT + simple feature pyramid + DINO with Mask DINO's mask branch)
end to end through the real mmengine Runner and the real CocoMetric: it fits a few stand-in
images (boxes and masks), a 2-process torchrun evaluation gives exactly the single-process COCO
numbers, and images without annotations train and evaluate."""
from __future__ import annotations

import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

from densevit.apis import load_config
from densevit.datasets.synthetic import make_coco
from densevit.engine import build_runner

from .conftest import ROOT, tool_env

CONFIG = osp.join(ROOT, 'configs/quickstart/dino_vit-tiny_coco.py')
PIPELINE = [dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs')]
OVERFIT_ITERS = 80  # one iteration each: a batch of the four images


def _options(data_root: str, work_dir: str, *, epochs: int, batch_size: int = 4,
             val_split: str = 'val') -> dict:
    """Config options for a short deterministic run (no augmentation, no worker processes, the
    learning rate the iteration counts below were measured with)."""
    return {
        'data_root': data_root,
        'work_dir': work_dir,
        'train_dataloader.batch_size': batch_size,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.pipeline': PIPELINE,
        'val_dataloader.num_workers': 0,
        'val_dataloader.persistent_workers': False,
        'val_dataloader.dataset.pipeline': PIPELINE,
        'val_dataloader.dataset.ann_file': f'annotations/instances_{val_split}2017.json',
        'val_dataloader.dataset.data_prefix': dict(img=f'{val_split}2017/'),
        'val_evaluator.ann_file': f'{data_root}annotations/instances_{val_split}2017.json',
        'test_dataloader.num_workers': 0,
        'test_dataloader.persistent_workers': False,
        'optim_wrapper.optimizer.lr': 2e-3,
        'train_cfg.max_epochs': epochs,
        'train_cfg.val_interval': epochs,
        'default_hooks.checkpoint.interval': epochs,
        'default_hooks.logger.interval': 20,
    }


def overfit_options(data_root: str, work_dir: str, iters: int = OVERFIT_ITERS) -> dict:
    """Four stand-in images, trained on as one batch and evaluated on the same four."""
    options = _options(data_root, work_dir, epochs=iters, val_split='train')
    options['param_scheduler'] = [dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                                       begin=0, end=20)]
    return options


@pytest.fixture(scope='module')
def four_images(tmp_path_factory) -> str:
    """Four stand-in images at the quickstart's own size (128 px), 14 objects, none of them
    crowd; returns the data root."""
    return make_coco(str(tmp_path_factory.mktemp('coco4')), seed=1, num_train=4,
                     num_val=1) + '/'


@pytest.mark.slow
def test_dino_overfits_four_images(four_images, tmp_path):
    runner = build_runner(load_config(CONFIG, overfit_options(four_images, str(tmp_path))))
    runner.train()
    metrics = runner.val_loop.run()
    assert metrics['coco/bbox_mAP_50'] >= 0.9, metrics
    assert metrics['coco/segm_mAP_50'] >= 0.8, metrics


def _run_tool(script: str, *args: str, port: int) -> str:
    env = tool_env()
    env.update(PYTHON=sys.executable, PORT=str(port))
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_dist_test_equals_single_process(four_images, tmp_path):
    # a checkpoint trained briefly on the four images and evaluated on them, so that the numbers
    # compared are neither all 0 nor all 1
    iters = 20
    options = overfit_options(four_images, str(tmp_path / 'train'), iters)
    options['train_cfg.val_interval'] = iters + 1  # no evaluation here
    build_runner(load_config(CONFIG, options)).train()
    ckpt = str(tmp_path / 'train' / f'epoch_{iters}.pth')
    test_options = ['--cfg-options', f'data_root={four_images}',
                    'test_dataloader.dataset.ann_file=annotations/instances_train2017.json',
                    'test_dataloader.dataset.data_prefix.img=train2017/',
                    f'test_evaluator.ann_file={four_images}annotations/instances_train2017.json',
                    'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    log = _run_tool('dist_test.sh', CONFIG, ckpt, '2', '--work-dir', str(tmp_path / 't2'),
                    '--metrics-out', str(tmp_path / 'two.json'), *test_options, port=29627)
    assert 'Distributed launcher: pytorch' in log, log[-2000:]
    from tools.test import main as test_main
    single = test_main([CONFIG, ckpt, '--work-dir', str(tmp_path / 't1'), *test_options])
    two = json.loads((tmp_path / 'two.json').read_text())
    # two images per process; CocoMetric evaluates the predictions gathered from both
    assert two == pytest.approx({k: float(v) for k, v in single.items()}, abs=1e-9)
    assert 0 < single['coco/bbox_mAP_50'] < 1 and 0 < single['coco/segm_mAP_50'] < 1, single


def _strip_annotations(ann_file: str, keep_images: int) -> list[int]:
    """Remove every annotation of all but the last ``keep_images`` images; returns the ids of
    the images left without annotations."""
    with open(ann_file) as f:
        data = json.load(f)
    emptied = [img['id'] for img in data['images'][:len(data['images']) - keep_images]]
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] not in emptied]
    with open(ann_file, 'w') as f:
        json.dump(data, f)
    return emptied


@pytest.mark.slow
def test_images_without_annotations_train_and_evaluate(tmp_path):
    from mmengine.hooks import Hook

    root = make_coco(str(tmp_path / 'data'), seed=1, num_train=4, num_val=4, size=64) + '/'
    _strip_annotations(osp.join(root, 'annotations/instances_train2017.json'), keep_images=1)
    _strip_annotations(osp.join(root, 'annotations/instances_val2017.json'), keep_images=2)
    epochs = 6
    options = _options(root, str(tmp_path / 'work'), epochs=epochs, batch_size=2)
    options.update({'train_dataloader.dataset.filter_cfg': dict(filter_empty_gt=False),
                    'train_dataloader.sampler.shuffle': False,
                    'param_scheduler': []})
    runner = build_runner(load_config(CONFIG, options))

    class Losses(Hook):
        """Records the losses of every iteration."""
        seen: list[dict] = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            Losses.seen.append({k: float(v.detach()) for k, v in outputs.items()})

    runner.register_hook(Losses())
    runner.train()
    # batches in order: images 0 and 1 (no annotations: every query is matched to no-object,
    # no denoising queries), then images 2 (none) and 3 (some)
    empty, mixed = Losses.seen[0::2], Losses.seen[1::2]
    assert len(empty) == len(mixed) == epochs
    for losses in empty:
        assert not any(k.startswith('dn.') for k in losses), sorted(losses)
        for name in ('loss_bbox', 'loss_giou', 'loss_mask', 'loss_dice', 'enc.loss_bbox'):
            assert losses[name] == 0.0, (name, losses)
        assert losses['loss_cls'] > 0
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in mixed)
    assert all('dn.loss_bbox' in m and m['loss_bbox'] > 0 for m in mixed)
    # the no-object target is learnt: the class loss of the empty batch falls
    assert empty[-1]['loss_cls'] < 0.5 * empty[0]['loss_cls'], [e['loss_cls'] for e in empty]

    # evaluated on two images with objects and two without
    metrics = runner.val_loop.run()
    for kind in ('bbox', 'segm'):
        assert 0.0 <= metrics[f'coco/{kind}_mAP'] <= 1.0, metrics
