"""The quickstart UperNet (plain ViT + simple feature pyramid) can fit a few stand-in images:
the whole path from files through the Runner to the real metric learns, not just runs."""
import os.path as osp

import pytest

from densevit.apis import load_config
from densevit.datasets.synthetic import make_ade20k
from densevit.engine import build_runner

from .conftest import ROOT

EPOCHS = 200  # one iteration each: a batch of the four images
CONFIG = osp.join(ROOT, 'configs/quickstart/upernet_resnet18_ade20k.py')


@pytest.mark.slow
def test_upernet_overfits_four_images(tmp_path):
    # four stand-in images at the quickstart's own size (128 px)
    ade20k_root = make_ade20k(str(tmp_path / 'data'), seed=1, num_train=4, num_val=1) + '/'
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
                dict(type='PackSegInputs')]
    train_split = dict(img_path='images/training', seg_map_path='annotations/training')
    cfg = load_config(CONFIG, {
        'data_root': ade20k_root,
        'work_dir': str(tmp_path / 'work'),
        'train_dataloader.batch_size': 4,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.pipeline': pipeline,
        # evaluate on the same four training images
        'val_dataloader.num_workers': 0,
        'val_dataloader.persistent_workers': False,
        'val_dataloader.dataset.data_prefix': train_split,
        'val_dataloader.dataset.test_mode': True,
        'val_dataloader.dataset.pipeline': pipeline,
        'train_cfg.max_epochs': EPOCHS,
        'train_cfg.val_interval': EPOCHS,
        'optim_wrapper.optimizer.lr': 2e-3,
        'param_scheduler': [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                 end=20)],
        'default_hooks.checkpoint.interval': 1000,
        'default_hooks.logger.interval': 50,
    })
    runner = build_runner(cfg)
    runner.train()
    metrics = runner.val_loop.run()
    assert metrics['ade20k/mIoU'] >= 90.0, metrics
