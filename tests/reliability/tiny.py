"""Tiny configs for the reliability tests: the quickstart Segmenter on a one-block ViT at 32 px,
with random flips, photometric distortion and drop path (so a resume that loses a random state
shows), validation during training and checkpoints in the middle of epochs."""
from __future__ import annotations

import os.path as osp

from ..conftest import ROOT

BASE = osp.join(ROOT, 'configs/quickstart/segmenter-linear_vit-tiny_ade20k.py')

_TEMPLATE = """
_base_ = {base!r}
custom_imports = dict(imports=['tests.reliability.recorder'], allow_failed_imports=False)
data_root = {data_root!r}
model = dict(data_preprocessor=dict(size=(32, 32)),
             backbone=dict(depth=1, pretrain_img_size=32, drop_path_rate=0.3))
_train = [dict(type='LoadImageFromFile'),
          dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
          dict(type='Resize', scale=(32, 32), keep_ratio=False),
          dict(type='RandomFlip', prob=0.5),
          dict(type='PhotoMetricDistortion'),
          dict(type='PackSegInputs')]
_test = [dict(type='LoadImageFromFile'),
         dict(type='Resize', scale=(32, 32), keep_ratio=False),
         dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
         dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        sampler=dict(type={sampler!r}, shuffle=True),
                        dataset=dict(data_root=data_root, pipeline=_train))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=_test))
test_dataloader = val_dataloader
randomness = dict(seed=3, deterministic=True)
log_processor = dict(by_epoch={by_epoch})
custom_hooks = [dict(type='StepRecorder', path={record!r}, block_after={block_after!r},
                     block_rank={block_rank!r})]
{loop}
"""

# 12 training images, batch 2: 6 steps per epoch
EPOCH_LOOP = """
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
                   dict(type='PolyLR', power=1.0, by_epoch=True, begin=0, end=2,
                        convert_to_iter_based=True)]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2, max_keep_ckpts=2),
                     logger=dict(interval=1, log_metric_by_epoch=True))
"""
ITER_LOOP = """
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=9, val_interval=4)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
                   dict(type='PolyLR', power=1.0, by_epoch=False, begin=0, end=9)]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=3, max_keep_ckpts=2),
                     logger=dict(interval=1, log_metric_by_epoch=False))
"""


def write_config(folder, name: str, data_root: str, record: str, *, loop: str = 'epoch',
                 block_after: int | None = None, block_rank: int | None = None,
                 extra: str = '') -> str:
    """Write a tiny config to ``folder/name.py`` and return its path."""
    epoch = loop == 'epoch'
    text = _TEMPLATE.format(base=BASE, data_root=data_root, record=record,
                            block_after=block_after, block_rank=block_rank, by_epoch=epoch,
                            sampler='DefaultSampler' if epoch else 'InfiniteSampler',
                            loop=EPOCH_LOOP if epoch else ITER_LOOP) + extra
    path = osp.join(str(folder), f'{name}.py')
    with open(path, 'w') as f:
        f.write(text)
    return path
