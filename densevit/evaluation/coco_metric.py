"""COCO box and mask AP, computed with faster-coco-eval.

``process`` turns each image's predictions into small numpy arrays and RLE-encoded masks (so the
results gathered across processes stay small); ``compute_metrics`` writes them as COCO results
(category ids from ``dataset_meta['cat_ids']``), evaluates them against the annotation file on the
images that were processed, and reports the 12 standard COCO numbers per metric.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pycocotools.mask as mask_util
from faster_coco_eval import COCO, COCOeval_faster
from mmengine.evaluator import BaseMetric
from mmengine.fileio import dump, exists, get_local_path
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement

from densevit.registry import METRICS

from .table import format_table

__all__ = ['CocoMetric']

_ALLOWED_METRICS = ('bbox', 'segm')
_AP_NAMES = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
_AR_AREA_NAMES = ('AR_s', 'AR_m', 'AR_l')


def _encode_masks(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool masks -> N compressed RLEs with ``counts`` as str (JSON-ready)."""
    # (N, H, W) -> (H, W, N), Fortran order as pycocotools expects
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_util.encode(fortran)
    for rle in rles:
        rle['counts'] = rle['counts'].decode('ascii')
    return rles


@METRICS.register_module()
class CocoMetric(BaseMetric):
    """COCO detection (``'bbox'``) and instance-segmentation (``'segm'``) AP / AR.

    ``process`` reads, per image, ``img_id`` and ``pred_instances`` with ``bboxes`` (N, 4) xyxy in
    original-image pixels, ``scores`` (N,), ``labels`` (N,) contiguous class indices and, for
    ``'segm'``, ``masks`` (N, H, W) bool at the original size. Label ``i`` is COCO category
    ``dataset_meta['cat_ids'][i]`` (if the dataset gives no ``cat_ids``, they are looked up by the
    names in ``dataset_meta['classes']`` in the annotation file). Only the images processed and the
    categories in ``cat_ids`` are evaluated, so a subset of images or classes is scored fairly.

    Results, for each ``m`` in ``metric``: ``{m}_mAP``, ``{m}_mAP_50``, ``{m}_mAP_75``,
    ``{m}_mAP_s``, ``{m}_mAP_m``, ``{m}_mAP_l``, ``{m}_AR_{n}`` for ``n`` in ``proposal_nums``,
    ``{m}_AR_s``, ``{m}_AR_m``, ``{m}_AR_l``; plain floats, fractions in [0, 1] and not rounded
    (the Runner's log prints 4 decimals; keeping full precision lets best-checkpoint selection and
    tests compare exactly). A number with nothing to average (e.g. ``mAP_s`` with no small
    ground-truth objects) is -1, as the COCO API reports it. AP uses ``proposal_nums[-1]``
    detections per image. The mask results carry the predicted box too, so a mask detection's
    area (used for the small/medium/large ranges) is its box area, as in the results files that
    published COCO numbers come from.

    Args:
        ann_file: COCO annotation json (ground truth); with ``backend_args`` it may be remote.
        metric: ``'bbox'``, ``'segm'`` or a sequence of them.
        classwise: log a per-category table of AP and AP50.
        proposal_nums: maximum detections per image for the AR numbers (AP uses the last).
        format_only: only write the results json (e.g. for test-dev) and return no metrics; needs
            ``outfile_prefix``.
        outfile_prefix: if given, results are written to ``{outfile_prefix}.bbox.json`` and
            ``{outfile_prefix}.segm.json`` (also when metrics are computed).
        backend_args: mmengine file backend arguments for reading ``ann_file`` and writing results.
        collect_device: device used to gather results across processes (``'cpu'`` or ``'gpu'``).
        prefix: prefix of the result keys; ``'coco'`` by default (``coco/bbox_mAP``).
    """

    default_prefix: str | None = 'coco'

    def __init__(self,
                 ann_file: str,
                 metric: str | Sequence[str] = ('bbox', ),
                 classwise: bool = True,
                 proposal_nums: Sequence[int] = (1, 10, 100),
                 format_only: bool = False,
                 outfile_prefix: str | None = None,
                 backend_args: dict | None = None,
                 collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        metrics = (metric, ) if isinstance(metric, str) else tuple(metric)
        unknown = [m for m in metrics if m not in _ALLOWED_METRICS]
        if unknown or not metrics:
            raise KeyError(f'CocoMetric got metric={metric!r}; allowed: any of {_ALLOWED_METRICS}')
        if format_only and outfile_prefix is None:
            raise ValueError('CocoMetric(format_only=True) writes results json files and needs '
                             'outfile_prefix (e.g. "work_dirs/coco_test/results")')
        if not exists(ann_file, backend_args=backend_args):
            raise FileNotFoundError(f'CocoMetric ann_file {ann_file!r} does not exist (check the '
                                    "config's data_root and val_evaluator.ann_file)")
        self.ann_file = ann_file
        self.metrics = metrics
        self.classwise = classwise
        self.proposal_nums = tuple(int(n) for n in proposal_nums)
        self.format_only = format_only
        self.outfile_prefix = outfile_prefix
        self.backend_args = backend_args
        self._coco_gt: COCO | None = None  # loaded on first compute, on the main process only

    # ----------------------------------------------------------------------------------- process
    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Store each image's predictions as numpy arrays (and RLE masks for ``'segm'``)."""
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            pred = sample['pred_instances']
            result = {
                'img_id': int(sample['img_id']),
                'bboxes': _numpy(pred['bboxes']).astype(np.float64).reshape(-1, 4),
                'scores': _numpy(pred['scores']).astype(np.float64).reshape(-1),
                'labels': _numpy(pred['labels']).astype(np.int64).reshape(-1),
            }
            if 'segm' in self.metrics:
                if 'masks' not in pred:
                    raise KeyError(f"CocoMetric(metric={self.metrics}) needs pred_instances.masks "
                                   f"but image {result['img_id']} has only {sorted(pred.keys())}")
                masks = _numpy(pred['masks']).astype(bool)
                if masks.ndim != 3 or len(masks) != len(result['scores']):
                    raise ValueError(f'pred_instances.masks of image {result["img_id"]} has shape '
                                     f'{masks.shape}; expected (N={len(result["scores"])}, H, W)')
                result['masks'] = _encode_masks(masks)
            self.results.append(result)

    # ----------------------------------------------------------------------------------- compute
    def compute_metrics(self, results: list) -> dict[str, float]:
        """Evaluate the gathered results; returns {} when ``format_only``."""
        coco_gt = self._load_gt()
        cat_ids = self._cat_ids(coco_gt)
        img_ids = sorted({r['img_id'] for r in results})
        missing = [i for i in img_ids if i not in coco_gt.imgs]
        if missing:
            raise KeyError(f'CocoMetric got predictions for img_id {missing[:5]} that are not in '
                           f'{self.ann_file}; is the dataset built from the same annotation file?')
        if 'segm' in self.metrics:
            for r in results:
                image = coco_gt.imgs[r['img_id']]
                size = [image['height'], image['width']]
                if r['masks'] and r['masks'][0]['size'] != size:
                    raise ValueError(f'pred_instances.masks of image {r["img_id"]} are '
                                     f'{r["masks"][0]["size"]} (H, W) but the image is {size} in '
                                     f'{self.ann_file}; masks must be at ori_shape')
        json_results = {m: self._to_coco_json(results, cat_ids, m) for m in self.metrics}

        if self.outfile_prefix is not None:
            for m, dets in json_results.items():
                path = f'{self.outfile_prefix}.{m}.json'
                dump(dets, path, backend_args=self.backend_args)
                print_log(f'{m} results written to {path}', logger='current')
        if self.format_only:
            return {}

        metrics: dict[str, float] = {}
        for m, dets in json_results.items():
            stats = self._evaluate(coco_gt, dets, m, img_ids, cat_ids)
            names = (_AP_NAMES + tuple(f'AR_{n}' for n in self.proposal_nums) + _AR_AREA_NAMES)
            for name, value in zip(names, stats):
                metrics[f'{m}_{name}'] = float(value)
            print_log(f'{m}: ' + ' '.join(f'{n} {metrics[f"{m}_{n}"]:.4f}' for n in names),
                      logger='current')
        return metrics

    def _load_gt(self) -> COCO:
        if self._coco_gt is None:
            with get_local_path(self.ann_file, backend_args=self.backend_args) as local_path:
                self._coco_gt = COCO(local_path)
        return self._coco_gt

    def _cat_ids(self, coco_gt: COCO) -> list[int]:
        """COCO category id of every contiguous label, from dataset_meta."""
        meta = self.dataset_meta or {}
        if meta.get('cat_ids') is not None:
            cat_ids = [int(c) for c in meta['cat_ids']]
            unknown = [c for c in cat_ids if c not in coco_gt.cats]
            if unknown:
                raise KeyError(f'dataset_meta["cat_ids"] has {unknown}, not categories of '
                               f'{self.ann_file} (which has {sorted(coco_gt.cats)})')
            return cat_ids
        if meta.get('classes') is None:
            raise RuntimeError('CocoMetric needs dataset_meta with "cat_ids" (or "classes" to look '
                               'them up by name); the Runner sets it from the dataset metainfo')
        by_name = {cat['name']: cat['id'] for cat in coco_gt.dataset['categories']}
        unknown = [n for n in meta['classes'] if n not in by_name]
        if unknown:
            raise KeyError(f'dataset_meta["classes"] has {unknown}, not category names of '
                           f'{self.ann_file}')
        return [by_name[n] for n in meta['classes']]

    def _to_coco_json(self, results: list, cat_ids: list[int], metric: str) -> list[dict]:
        """COCO results format: one dict per detection, xywh boxes, real category ids."""
        dets = []
        for result in results:
            labels = result['labels']
            if len(labels) and (labels.min() < 0 or labels.max() >= len(cat_ids)):
                raise ValueError(f'image {result["img_id"]} has predicted label '
                                 f'{int(labels.min())}..{int(labels.max())}, outside [0, '
                                 f'{len(cat_ids)}) for the {len(cat_ids)} dataset cat_ids')
            xywh = result['bboxes'].copy()
            xywh[:, 2:] -= xywh[:, :2]  # (x1, y1, x2, y2) -> (x, y, w, h)
            for i in range(len(labels)):
                det = {
                    'image_id': result['img_id'],
                    'category_id': cat_ids[labels[i]],
                    'bbox': [float(v) for v in xywh[i]],
                    'score': float(result['scores'][i]),
                }
                if metric == 'segm':
                    det['segmentation'] = result['masks'][i]
                dets.append(det)
        return dets

    def _evaluate(self, coco_gt: COCO, dets: list[dict], metric: str, img_ids: list[int],
                  cat_ids: list[int]) -> np.ndarray:
        """Run faster-coco-eval on one iou type; returns the summary stats and logs the table."""
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        coco_eval = COCOeval_faster(coco_gt, coco_dt, iouType=metric,
                                    print_function=_log_quietly)
        coco_eval.params.imgIds = img_ids
        coco_eval.params.catIds = sorted(set(cat_ids))
        coco_eval.params.maxDets = list(self.proposal_nums)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        stats = np.asarray(coco_eval.stats)
        if self.classwise:
            self._log_per_category(coco_gt, coco_eval, metric)
        return stats

    def _log_per_category(self, coco_gt: COCO, coco_eval: COCOeval_faster, metric: str) -> None:
        # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets)
        precision = coco_eval.eval['precision']
        rows = []
        for k, cat_id in enumerate(coco_eval.params.catIds):
            row = [coco_gt.cats[int(cat_id)]['name']]
            for p in (precision[:, :, k, 0, -1], precision[0, :, k, 0, -1]):
                valid = p[p > -1]
                row.append(f'{valid.mean():.3f}' if valid.size else None)
            if row[1] is not None:  # a category without ground truth has no AP: not a row
                rows.append(row)
        hidden = len(coco_eval.params.catIds) - len(rows)
        note = (f'\n({hidden} of {len(coco_eval.params.catIds)} categories have no ground truth '
                f'here and are not shown)' if hidden else '')
        print_log(f'per category {metric} results:\n' + format_table(
            ['Category', 'AP', 'AP50'], rows) + note, logger='current')


def _numpy(value: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(value, 'detach'):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _log_quietly(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval's progress lines, kept out of the training log unless at DEBUG level."""
    print_log(' '.join(str(a) for a in args), logger='current', level=10)
