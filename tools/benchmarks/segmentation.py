"""Segmentation benchmarks.

1. The quickstart UperNet (configs/quickstart/upernet_vit-tiny_ade20k.py, what ``make demo`` runs):
   training images per second and mIoU on the synthetic ADE20K stand-in's val split after the
   config's full CPU schedule (``quick``: 2 epochs).
2. Sliding-window inference throughput of a UperNet segmentor (Swin-T backbone): 512x512 windows,
   stride 341, on one 2048x1024 image (the ADE20K / Cityscapes test setting), with windows run one
   at a time and batched. ``quick`` uses a shrunken Swin and a 512x256 image.
"""
from __future__ import annotations

import os.path as osp
import tempfile
import time

import torch

import densevit.models  # noqa: F401  (registers modules)
from densevit.models.tasks.segmentor import slide_windows
from densevit.registry import MODELS
from densevit.structures import DataSample


def _model(quick: bool, crop: int, stride: int, batch_size: int):
    if quick:
        backbone = dict(type='Swin', arch='tiny', embed_dim=32, depths=(1, 1, 1, 1),
                        num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
        channels = 64
    else:
        backbone = dict(type='Swin', arch='tiny', drop_path_rate=0.0)
        channels = 512
    return MODELS.build(dict(
        type='Segmentor', backbone=backbone,
        decode_head=dict(type='UPerHead', num_classes=150, channels=channels),
        data_preprocessor=dict(type='SegDataPreprocessor'),
        test_cfg=dict(mode='slide', crop_size=(crop, crop), stride=(stride, stride),
                      batch_size=batch_size))).eval()


ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs/quickstart/upernet_vit-tiny_ade20k.py')


def quickstart(quick: bool) -> dict:
    """Train the quickstart config on the stand-in set (written if missing) and evaluate it."""
    from mmengine.hooks import Hook

    from densevit.apis import load_config
    from densevit.datasets.synthetic import make_ade20k
    from densevit.engine import build_runner

    cfg = load_config(QUICKSTART)
    if not osp.isdir(osp.join(cfg.data_root, 'images')):
        make_ade20k(osp.dirname(cfg.data_root.rstrip('/')), seed=0)

    class TrainClock(Hook):
        """Counts training images and the seconds spent in training iterations only."""
        images, seconds = 0, 0.0

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self._start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            TrainClock.seconds += time.perf_counter() - self._start
            TrainClock.images += len(data_batch['inputs'])

    with tempfile.TemporaryDirectory() as work_dir:
        options = {'work_dir': work_dir, 'default_hooks.checkpoint.interval': 10_000}
        if quick:
            options.update({'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 2})
        cfg = load_config(QUICKSTART, options)
        runner = build_runner(cfg)
        runner.register_hook(TrainClock())
        start = time.perf_counter()
        runner.train()
        total = time.perf_counter() - start
        metrics = runner.val_loop.run()
    return dict(model='quickstart UperNet ViT-tiny (stand-in ADE20K)',
                epochs=cfg.train_cfg.max_epochs, train_images_per_s=TrainClock.images /
                TrainClock.seconds, train_minutes=total / 60, val_mIoU=metrics['ade20k/mIoU'],
                val_aAcc=metrics['ade20k/aAcc'], threads=torch.get_num_threads())


def run(quick: bool = False) -> list[dict]:
    return [quickstart(quick), *sliding_window(quick)]


def sliding_window(quick: bool) -> list[dict]:
    height, width, crop, stride = (256, 512, 256, 171) if quick else (1024, 2048, 512, 341)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    num_windows = len(slide_windows((height, width), (crop, crop), (stride, stride)))
    rows = []
    for batch_size in (1, 4):
        torch.manual_seed(0)
        model = _model(quick, crop, stride, batch_size)
        sample = DataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
        data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
        repeats = 2 if quick else 1
        with torch.no_grad():
            model.encode_decode(data['inputs'][..., :crop, :crop])  # warm-up on one window
            start = time.perf_counter()
            for _ in range(repeats):
                model(**data, mode='predict')
            seconds = (time.perf_counter() - start) / repeats
        rows.append(dict(model='UperNet Swin-T' + (' (shrunk)' if quick else ''),
                         image=f'{width}x{height}', window=f'{crop}x{crop}', stride=stride,
                         windows=num_windows, window_batch=batch_size,
                         seconds_per_image=seconds, images_per_s=1.0 / seconds,
                         threads=torch.get_num_threads()))
    return rows


if __name__ == '__main__':
    for row in run(quick=True):
        print(row)
