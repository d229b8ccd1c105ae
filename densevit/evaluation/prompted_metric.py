"""Prompted-mask metric: mean IoU of a promptable segmenter's masks over every gt instance, per
prompt mode (one point, one box, k corrective clicks).

``PromptableSegmenter.predict`` leaves, on each image's sample, ``prompted_ious``: {mode: (N,)
IoUs of its N scored instances}. ``process`` keeps them per image (a few floats); mmengine
gathers the per-image results of every process (one entry per image of the dataset, the
sampler's padding dropped), and ``compute_metrics`` averages over all instances of the dataset,
so the numbers do not depend on how the images were spread over processes. This is the mIoU
segment-anything-fast reports for COCO val2017 ("mIoU averaged per all selected masks").
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement

from densevit.registry import METRICS

from .table import format_table

__all__ = ['PromptedIoUMetric']


@METRICS.register_module()
class PromptedIoUMetric(BaseMetric):
    """``{mode}_mIoU`` for each prompt mode: the mean IoU over all instances of the dataset.

    Results are fractions in [0, 1], not rounded (as ``CocoMetric``); a mode with no instance
    is NaN. A table of mode, instances and mIoU is logged.

    Args:
        modes: the modes to report, in this order (each must be in every image's
            ``prompted_ious``); None reports every mode the model scored, in its order.
        collect_device: device used to gather results across processes (``'cpu'`` or ``'gpu'``).
        prefix: prefix of the result keys; ``'prompted'`` by default (``prompted/1-box_mIoU``).
    """

    default_prefix: str | None = 'prompted'

    def __init__(self, modes: Sequence[str] | None = None, collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.modes = None if modes is None else [modes] if isinstance(modes, str) else list(modes)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Store each image's {mode: (N,) float64 IoUs}."""
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            if 'prompted_ious' not in sample:
                raise KeyError('PromptedIoUMetric reads prompted_ious from each data sample, as '
                               'PromptableSegmenter.predict sets it; this sample has only '
                               f'{sorted(sample)}')
            ious = sample['prompted_ious']
            self.results.append({mode: np.asarray(
                values.cpu() if hasattr(values, 'cpu') else values, np.float64).reshape(-1)
                for mode, values in ious.items()})

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Mean IoU per mode over the instances of all images."""
        modes = self.modes
        if modes is None:
            modes = list(dict.fromkeys(mode for image in results for mode in image))
        missing = sorted({mode for image in results for mode in modes if mode not in image})
        if missing:
            scored = sorted({mode for image in results for mode in image})
            raise KeyError(f'PromptedIoUMetric modes {missing} were not scored by the model '
                           f'(it scored {scored}); set the model\'s test_cfg modes to include '
                           'them')
        if not results:
            print_log('PromptedIoUMetric got no results', logger='current')
        metrics, rows = {}, []
        for mode in modes:
            values = np.concatenate([image[mode] for image in results] or [np.zeros(0)])
            miou = float(values.mean()) if len(values) else float('nan')
            metrics[f'{mode}_mIoU'] = miou
            rows.append([mode, len(values), f'{miou:.4f}'])
        print_log('prompted mask IoU:\n' + format_table(['Mode', 'Instances', 'mIoU'], rows),
                  logger='current')
        return metrics
