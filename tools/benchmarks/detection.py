"""Detection benchmarks.

1. The set-prediction losses at DINO's COCO scale: the Hungarian matcher alone and the whole
   SetCriterion of one decoder layer (matching plus losses, forward and forward + backward) on a
   batch of 8 images x 900 queries x 50 targets, 80 classes, float32; with masks too: stride-4
   mask logits of a 256 x 256 input (64 x 64) and the 12544 sampled points of Mask DINO.
   Time is the median of the runs after one warm-up (``interleaved`` of
   tools/benchmarks/_common.py), wall clock and process CPU time
   (which a shared machine disturbs less); the matcher's time includes ``linear_sum_assignment``
   on the CPU.
2. The quickstart DINO (configs/quickstart/dino_vit-tiny_coco.py, what ``make demo`` runs with
   that config): training images per second and box / mask AP and AP50 on the synthetic COCO
   stand-in's val split after the config's full CPU schedule (``quick``: 1 epoch).

Run alone: ``python tools/benchmarks/detection.py [--quick]``.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

import torch

import densevit.models  # noqa: F401  (registers modules)
from densevit.registry import MODELS

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import interleaved  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(ROOT, 'configs/quickstart/dino_vit-tiny_coco.py')
BATCH, QUERIES, TARGETS, CLASSES = 8, 900, 50, 80
MASK_SIZE, NUM_POINTS = 64, 12544  # mask logits of a 256 x 256 input at stride 4


def _problem(with_masks: bool, seed: int = 0) -> tuple[dict, list[dict]]:
    """Random predictions (requiring grad) and targets of the benchmark's size."""
    gen = torch.Generator().manual_seed(seed)
    outputs = dict(logits=torch.randn(BATCH, QUERIES, CLASSES, generator=gen),
                   # (cx, cy, w, h) in (0.1, 0.9) x (0.02, 0.3): valid, mostly overlapping boxes
                   boxes=torch.cat([0.1 + 0.8 * torch.rand(BATCH, QUERIES, 2, generator=gen),
                                    0.02 + 0.28 * torch.rand(BATCH, QUERIES, 2, generator=gen)],
                                   -1))
    if with_masks:
        outputs['masks'] = torch.randn(BATCH, QUERIES, MASK_SIZE, MASK_SIZE, generator=gen)
    for value in outputs.values():
        value.requires_grad_(True)
    targets = []
    for _ in range(BATCH):
        target = dict(labels=torch.randint(0, CLASSES, (TARGETS,), generator=gen),
                      boxes=torch.cat([0.1 + 0.8 * torch.rand(TARGETS, 2, generator=gen),
                                       0.02 + 0.28 * torch.rand(TARGETS, 2, generator=gen)], -1))
        if with_masks:
            size = 4 * MASK_SIZE
            target['masks'] = torch.rand(TARGETS, size, size, generator=gen) < 0.2
        targets.append(target)
    return outputs, targets


def _time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    timing = interleaved({'fn': fn}, repeats)['fn']
    return 1e3 * timing.seconds, 1e3 * timing.cpu_seconds


def set_losses(quick: bool) -> list[dict]:
    """Milliseconds per batch of the matcher and of a one-layer SetCriterion (DINO / Mask DINO
    costs and weights)."""
    repeats = 2 if quick else 5
    rows = []
    for with_masks in (False, True):
        mask_costs = dict(cost_mask=5.0, cost_dice=5.0) if with_masks else {}
        matcher = dict(type='HungarianMatcher', class_cost='focal', cost_class=2.0,
                       cost_bbox=5.0, cost_giou=2.0, num_points=NUM_POINTS, **mask_costs)
        criterion = MODELS.build(dict(type='SetCriterion', num_classes=CLASSES, matcher=matcher,
                                      num_points=NUM_POINTS))
        outputs, targets = _problem(with_masks)

        def backward():
            sum(criterion(outputs, targets).values()).backward()

        cases = (('matcher', lambda: criterion.matcher(outputs, targets)),
                 ('criterion fwd', lambda: criterion(outputs, targets)),
                 ('criterion fwd+bwd', backward))
        for name, fn in cases:
            with torch.no_grad() if name != 'criterion fwd+bwd' else torch.enable_grad():
                wall_ms, cpu_ms = _time(fn, repeats)
            rows.append(dict(what=name, masks=with_masks, images=BATCH, queries=QUERIES,
                             targets=TARGETS, classes=CLASSES,
                             mask_grid=f'{MASK_SIZE}x{MASK_SIZE}' if with_masks else '',
                             ms=wall_ms, cpu_ms=cpu_ms, threads=torch.get_num_threads()))
    return rows


def quickstart(quick: bool) -> dict:
    """Train the quickstart config on the stand-in set (written if missing) and evaluate it."""
    from densevit.apis import load_config
    from densevit.datasets.synthetic import make_coco

    from benchmarks.quickstart_run import train_and_validate

    data_root = load_config(QUICKSTART).data_root
    if not osp.isfile(osp.join(data_root, 'annotations', 'instances_val2017.json')):
        make_coco(data_root.rstrip('/'), seed=0)
    options = {'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1} if quick else {}
    result = train_and_validate(QUICKSTART, options)
    return dict(model='quickstart DINO ViT-tiny + masks (stand-in COCO)', epochs=result['epochs'],
                train_images_per_s=result['train_images_per_s'],
                train_minutes=result['train_minutes'],
                box_AP=result['coco/bbox_mAP'], box_AP50=result['coco/bbox_mAP_50'],
                mask_AP=result['coco/segm_mAP'], mask_AP50=result['coco/segm_mAP_50'],
                threads=torch.get_num_threads())


def run(quick: bool = False) -> list[dict]:
    return [*set_losses(quick), quickstart(quick)]


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--losses-only', action='store_true',
                        help='only the matcher / criterion timings')
    args = parser.parse_args()
    for row in (set_losses(args.quick) if args.losses_only else run(args.quick)):
        print(row)
