"""Semantic-segmentation metric: per-class IoU / accuracy, their means, and pixel accuracy.

Each image contributes four per-class pixel histograms (intersection, union, prediction area,
label area). They are exact integer counts, a few hundred numbers per image, and they add up:
the histograms of a whole dataset are the sum of the histograms of its parts in any order. That
is what makes the result identical whether the images are spread over one process or many.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement

from densevit.registry import METRICS

from .table import format_table

__all__ = ['IoUMetric', 'intersect_and_union']

_ALLOWED_METRICS = ('mIoU', 'mDice', 'mFscore')


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                        ignore_index: int) -> tuple[torch.Tensor, ...]:
    """Per-class pixel histograms of one image.

    Args:
        pred: (H, W) or (1, H, W) integer class indices predicted.
        label: ground-truth class indices of the same shape; ``ignore_index`` pixels are left out.
        num_classes: number of classes; every non-ignored value must lie in [0, num_classes).
        ignore_index: label value of pixels that count for nothing.

    Returns:
        ``(area_intersect, area_union, area_pred, area_label)``, each a (num_classes,) int64 tensor
        on the CPU.
    """
    if pred.shape != label.shape:
        raise ValueError(f'pred_sem_seg has shape {tuple(pred.shape)} but gt_sem_seg has '
                         f'{tuple(label.shape)}; both must be at the original image size')
    label = label.to(pred.device)
    keep = label != ignore_index
    pred = pred[keep].long()  # (H, W) -> (P,) valid pixels
    label = label[keep].long()  # (H, W) -> (P,)
    for name, values in (('gt_sem_seg', label), ('pred_sem_seg', pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f'{name} holds class index {int(values.min())}..{int(values.max())}, outside '
                f'[0, {num_classes}) for the {num_classes} classes of dataset_meta["classes"] '
                f'(and not ignore_index={ignore_index})')
    area_intersect = torch.bincount(pred[pred == label], minlength=num_classes)
    area_pred = torch.bincount(pred, minlength=num_classes)
    area_label = torch.bincount(label, minlength=num_classes)
    area_union = area_pred + area_label - area_intersect
    return tuple(t.cpu() for t in (area_intersect, area_union, area_pred, area_label))


@METRICS.register_module()
class IoUMetric(BaseMetric):
    """mIoU / mAcc / aAcc (and optionally mDice, mFscore) for semantic segmentation.

    ``process`` reads ``pred_sem_seg['data']`` and ``gt_sem_seg['data']`` ((1, H, W) long, both at
    the original image size, 255 = ignore) and stores the image's four per-class histograms.
    ``compute_metrics`` sums them and returns, in percent with 2 decimals:

    - ``aAcc``: correctly labelled pixels / labelled pixels, over all classes;
    - ``mIoU``: mean over classes of intersection / union; ``mAcc``: mean of intersection / label
      area; with ``'mDice'``: mean of 2 * intersection / (pred + label area); with ``'mFscore'``:
      ``mFscore``, ``mPrecision``, ``mRecall`` (F1, i.e. beta = 1).

    A class whose denominator is 0 (e.g. absent from both labels and predictions for IoU, absent
    from the labels for Acc) is NaN and left out of the mean, unless ``nan_to_num`` replaces it.
    The per-class values are logged as a table (the classes present in the labels or the
    predictions) and kept in ``last_per_class`` for every class (class name -> {'IoU': ...,
    'Acc': ..., ...}, percent), on the process that computes the metrics.

    Args:
        ignore_index: label value excluded from every count.
        iou_metrics: any of ``'mIoU'``, ``'mDice'``, ``'mFscore'``; ``mAcc`` and ``aAcc`` are
            always reported.
        nan_to_num: if given, per-class NaNs become this value before the means are taken.
        prefix: prefix of the result keys (none by default, so the Runner logs ``mIoU``).
        collect_device: device used to gather results across processes (``'cpu'`` or ``'gpu'``).
    """

    def __init__(self,
                 ignore_index: int = 255,
                 iou_metrics: Sequence[str] = ('mIoU', ),
                 nan_to_num: float | None = None,
                 prefix: str | None = None,
                 collect_device: str = 'cpu') -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if isinstance(iou_metrics, str):
            iou_metrics = (iou_metrics, )
        unknown = [m for m in iou_metrics if m not in _ALLOWED_METRICS]
        if unknown:
            raise KeyError(f'IoUMetric got iou_metrics {unknown}; allowed: {_ALLOWED_METRICS}')
        self.ignore_index = ignore_index
        self.iou_metrics = tuple(iou_metrics)
        self.nan_to_num = nan_to_num
        self.last_per_class: dict[str, dict[str, float]] = {}

    @property
    def class_names(self) -> list[str]:
        meta = self.dataset_meta
        if not meta or 'classes' not in meta:
            raise RuntimeError(
                'IoUMetric needs dataset_meta["classes"] (the Runner sets it from the dataset\'s '
                f'metainfo; in a script set metric.dataset_meta = dict(classes=[...])); got {meta}')
        return list(meta['classes'])

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Store each image's (area_intersect, area_union, area_pred, area_label)."""
        num_classes = len(self.class_names)
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            pred = sample['pred_sem_seg']['data'].squeeze(0)  # (1, H, W) -> (H, W)
            label = sample['gt_sem_seg']['data'].squeeze(0)  # (1, H, W) -> (H, W)
            self.results.append(
                intersect_and_union(pred, label, num_classes, self.ignore_index))

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Sum the histograms of all images and turn them into the metrics (percent)."""
        names = self.class_names
        if not results:
            print_log('IoUMetric got no results; every metric is NaN', logger='current')
        totals = [np.zeros(len(names), dtype=np.int64) for _ in range(4)]
        for image_hists in results:
            for total, hist in zip(totals, image_hists):
                total += np.asarray(hist, dtype=np.int64)
        area_intersect, area_union, area_pred, area_label = (t.astype(np.float64) for t in totals)

        with np.errstate(divide='ignore', invalid='ignore'):
            per_class = {'Acc': area_intersect / area_label}
            if 'mIoU' in self.iou_metrics:
                per_class['IoU'] = area_intersect / area_union
            if 'mDice' in self.iou_metrics:
                per_class['Dice'] = 2 * area_intersect / (area_pred + area_label)
            if 'mFscore' in self.iou_metrics:
                precision = area_intersect / area_pred
                recall = area_intersect / area_label
                per_class['Fscore'] = 2 * precision * recall / (precision + recall)
                per_class['Precision'] = precision
                per_class['Recall'] = recall
            a_acc = area_intersect.sum() / area_label.sum()
        if self.nan_to_num is not None:
            per_class = {k: np.nan_to_num(v, nan=self.nan_to_num) for k, v in per_class.items()}

        # IoU first, as in the logs people are used to reading.
        order = [k for k in ('IoU', 'Acc', 'Dice', 'Fscore', 'Precision', 'Recall')
                 if k in per_class]
        metrics = {'aAcc': _percent(a_acc)}
        for key in order:
            values = per_class[key]
            mean = np.nanmean(values) if not np.all(np.isnan(values)) else np.nan
            metrics['m' + key] = _percent(mean)

        self.last_per_class = {
            name: {key: _percent(per_class[key][i]) for key in order}
            for i, name in enumerate(names)
        }
        # The table shows the classes in the labels or the predictions; of ADE20K's 150, a
        # split may hold a handful, and rows of NaN would bury them.
        shown = [i for i in range(len(names)) if area_label[i] > 0 or area_pred[i] > 0]
        rows = [[names[i]] + [self.last_per_class[names[i]][k] for k in order] for i in shown]
        hidden = len(names) - len(shown)
        note = (f'\n({hidden} of {len(names)} classes are in neither the labels nor the '
                f'predictions and are not shown)' if hidden else '')
        print_log('per class results:\n' + format_table(['Class'] + order, rows) + note,
                  logger='current')
        return metrics


def _percent(value: float) -> float:
    """A fraction as a percentage rounded to 2 decimals (NaN stays NaN)."""
    return round(float(value) * 100, 2)
