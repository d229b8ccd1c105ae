"""Segmentation benchmarks.

1. The quickstart UperNet (configs/quickstart/upernet_resnet18_ade20k.py, what ``make demo`` runs):
   training images per second and mIoU on the synthetic ADE20K stand-in's val split after the
   config's full CPU schedule (``quick``: 2 epochs), and on the same split with every colour
   redrawn.
0. Shortcuts on the stand-in, the floor any learned number must clear: each val pixel labelled
   with the class of the nearest mean training colour (a colour lookup), with the most frequent
   training class at its relative position (a place prior), or with the most frequent class.
2. Sliding-window inference throughput of UperNet Swin-T: 512x512 windows, stride 341, on one
   2048x1024 image (the ADE20K / Cityscapes test setting), densevit's Segmentor with windows run
   one at a time and batched against transformers' UperNet run window by window with the same
   stitching, on the same weights. ``quick`` uses 256x256 windows on a 512x256 image.
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile

import numpy as np
import torch

import densevit.models  # noqa: F401  (registers modules)
from densevit.models.tasks.segmentor import slide_windows

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs/quickstart/upernet_resnet18_ade20k.py')


def quickstart(quick: bool) -> dict:
    """Train the quickstart config on the stand-in set (written if missing) and evaluate it, also
    on the val split with every colour redrawn."""
    from densevit.apis import load_config
    from densevit.datasets.synthetic import make_ade20k
    from densevit.engine import build_runner

    from benchmarks.quickstart_run import train_and_validate

    data_root = load_config(QUICKSTART).data_root
    if not osp.isdir(osp.join(data_root, 'images')):
        make_ade20k(osp.dirname(data_root.rstrip('/')), seed=0)

    def recolored(runner, work_dir) -> dict:
        root = make_ade20k(osp.join(work_dir, 'recolored'), seed=0, num_train=0, recolor_seed=1)
        tester = build_runner(load_config(QUICKSTART, {
            'work_dir': osp.join(work_dir, 'test'), 'data_root': root + '/',
            'visualizer.name': osp.join(work_dir, 'test')}))
        tester.model.load_state_dict(runner.model.state_dict())
        return {'recolored/mIoU': tester.test()['ade20k/mIoU']}

    options = {'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 2} if quick else {}
    result = train_and_validate(QUICKSTART, options, after=recolored)
    return dict(model='quickstart UperNet ResNet-18 (stand-in ADE20K)', epochs=result['epochs'],
                train_images_per_s=result['train_images_per_s'],
                train_minutes=result['train_minutes'], val_mIoU=result['ade20k/mIoU'],
                val_aAcc=result['ade20k/aAcc'], recolored_val_mIoU=result['recolored/mIoU'],
                threads=torch.get_num_threads())


def shortcuts() -> dict:
    """mIoU of a colour lookup, a place prior and the majority class on the stand-in val split."""
    import cv2

    from densevit.datasets.synthetic import make_ade20k

    with tempfile.TemporaryDirectory() as out:
        root = make_ade20k(out, seed=0)

        def load(split):
            folder = osp.join(root, 'images', split)
            for name in sorted(os.listdir(folder)):
                img = cv2.cvtColor(cv2.imread(osp.join(folder, name)), cv2.COLOR_BGR2RGB)
                seg = cv2.imread(osp.join(root, 'annotations', split, name[:-4] + '.png'),
                                 cv2.IMREAD_UNCHANGED)
                yield cv2.blur(img, (3, 3)).astype(np.float32), seg

        train, val = list(load('training')), list(load('validation'))
    classes = np.array(sorted(set(np.concatenate([np.unique(s) for _, s in train])) - {0}))
    means = np.stack([np.concatenate([img[seg == c] for img, seg in train]).mean(0)
                      for c in classes])
    grid = 32  # the place prior: the most frequent class per cell of a 32x32 relative grid
    counts = np.zeros((grid, grid, len(classes)))
    for _, seg in train:
        small = cv2.resize(seg, (grid, grid), interpolation=cv2.INTER_NEAREST)
        counts += small[..., None] == classes
    prior = classes[counts.argmax(-1)].astype(np.uint8)
    majority = classes[counts.sum((0, 1)).argmax()]

    def miou(predict) -> float:
        inter, union = np.zeros(len(classes)), np.zeros(len(classes))
        for img, seg in val:
            pred, valid = predict(img, seg), seg > 0
            for i, c in enumerate(classes):
                inter[i] += ((pred == c) & (seg == c)).sum()
                union[i] += (((pred == c) & valid) | (seg == c)).sum()
        present = union > 0
        return float(100 * (inter[present] / union[present]).mean())

    return dict(model='shortcuts on the stand-in ADE20K val split',
                colour_lookup_mIoU=miou(lambda img, seg: classes[
                    ((img[:, :, None] - means) ** 2).sum(-1).argmin(-1)]),
                place_prior_mIoU=miou(lambda img, seg: cv2.resize(
                    prior, seg.shape[::-1], interpolation=cv2.INTER_NEAREST)),
                majority_mIoU=miou(lambda img, seg: np.full_like(seg, majority)))


def run(quick: bool = False) -> list[dict]:
    return [shortcuts(), quickstart(quick), *sliding_window(quick)]


def sliding_window(quick: bool, tiny: bool = False) -> list[dict]:
    """Sliding-window inference of UperNet Swin-T (channels 512) on one 2048x1024 image, 512x512
    windows, stride 341 (3 x 6 = 18 windows), densevit's Segmentor with windows run 1 and 6 at a
    time against transformers' model run window by window with the same stitching, on the same
    weights (see benchmarks/upernet.py: the three timed interleaved in one process, each one's
    memory from a fresh process). ``quick``: a 512x256 image, 256 windows, stride 171 (3
    windows); ``tiny``: a 128x64 image, 64 windows, stride 43 (3 windows), a test of the
    harness."""
    from benchmarks.upernet import REPEATS, measure, reference_weights

    height, width, crop, stride = ((64, 128, 64, 43) if tiny else (256, 512, 256, 171) if quick
                                   else (1024, 2048, 512, 341))
    num_windows = len(slide_windows((height, width), (crop, crop), (stride, stride)))
    repeats = 1 if tiny else 2 if height > 512 else REPEATS  # a full image takes minutes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'upernet_swin_t.pt')
        reference_weights(weights)
        results = measure('slide', height, weights, ('ours:1', 'ours:6', 'transformers'),
                          slide=(width, crop, stride), repeats=repeats,
                          matmul_n=512 if tiny else 4096)
    ref = results['transformers']
    for window_batch in (1, 6):
        ours = results[f'ours:{window_batch}']
        rows.append(dict(
            model='UperNet Swin-T', image=f'{width}x{height}', window=f'{crop}x{crop}',
            stride=stride, windows=num_windows, window_batch=window_batch,
            ours_images_per_s=1.0 / ours['seconds'],
            reference='transformers, window by window',
            reference_images_per_s=1.0 / ref['seconds'],
            ratio=ref['seconds'] / ours['seconds'], ours_cpu_s=ours['cpu_seconds'],
            reference_cpu_s=ref['cpu_seconds'], ours_peak_mb=ours['peak_mb'],
            reference_peak_mb=ref['peak_mb'], max_rel_diff=ours['max_rel_diff'],
            threads=torch.get_num_threads()))
    return rows


if __name__ == '__main__':
    for row in run(quick=True):
        print(row)
