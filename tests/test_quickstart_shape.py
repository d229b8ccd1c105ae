"""The quickstart segmenter learns what the stand-in asks (texture, place, shape), not colour.

On the ADE20K stand-in every region and object takes its colour from one distribution shared by
all classes. The quickstart UperNet, trained briefly on it, keeps its val mIoU (within 3 points)
when every colour of the val split is redrawn (same shapes, same labels); a colour-lookup model
(a per-pixel 1x1-conv network, trained the same way) scores far below it, so colour alone does
not get the quickstart's number.
"""
import os.path as osp

import pytest
import torch
from torch import nn

from densevit.apis import load_config
from densevit.datasets.synthetic import make_ade20k
from densevit.engine import build_runner
from densevit.models.contract import Backbone, FeatureSpec
from densevit.registry import MODELS

from .conftest import ROOT

CONFIG = osp.join(ROOT, 'configs/quickstart/upernet_resnet18_ade20k.py')
EPOCHS = 8


@MODELS.register_module(name='_TestPixelColour', force=True)
class PixelColour(Backbone):
    """A per-pixel network on the RGB value alone (1x1 convs): a learned colour lookup."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, channels, 1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 1), nn.ReLU())
        self.out_features = {'s1': FeatureSpec(channels, 1)}
        self.num_layers = 1

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {'s1': self.net(images)}


def _runner(work_dir, data_root, model=None, **extra):
    options = {
        'data_root': data_root,
        'work_dir': str(work_dir),
        'train_cfg.max_epochs': EPOCHS,
        'train_cfg.val_interval': EPOCHS,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'val_dataloader.num_workers': 0,
        'val_dataloader.persistent_workers': False,
        'default_hooks.checkpoint.interval': EPOCHS,
        'randomness': dict(seed=0),
        **extra,
    }
    cfg = load_config(CONFIG, options)
    cfg.param_scheduler[-1].end = EPOCHS
    cfg.test_dataloader = cfg.val_dataloader
    if model is not None:
        cfg.model = model
    return build_runner(cfg)


@pytest.mark.slow
def test_quickstart_keeps_its_miou_when_every_colour_changes(tmp_path):
    root = make_ade20k(str(tmp_path / 'data'), seed=5, num_train=160, num_val=40) + '/'
    recolored = make_ade20k(str(tmp_path / 'recolored'), seed=5, num_train=0, num_val=40,
                            recolor_seed=1) + '/'
    runner = _runner(tmp_path / 'work', root)
    runner.train()
    miou = runner.val_loop.run()['ade20k/mIoU']
    checkpoint = osp.join(str(tmp_path / 'work'), f'epoch_{EPOCHS}.pth')
    tester = _runner(tmp_path / 'recolor', recolored, load_from=checkpoint)
    recolored_miou = tester.test()['ade20k/mIoU']

    colour = _runner(tmp_path / 'colour', root, model=dict(
        type='Segmentor', backbone=dict(type='_TestPixelColour'),
        decode_head=dict(type='SegmenterLinearHead', in_features=('s1',), num_classes=150),
        test_cfg=dict(mode='whole')))
    colour.train()
    colour_miou = colour.val_loop.run()['ade20k/mIoU']

    assert miou > 2 * colour_miou, (miou, colour_miou)
    assert abs(miou - recolored_miou) < 3.0, (miou, recolored_miou)
