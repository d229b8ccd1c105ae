"""ADE20K (SceneParsing, 150 classes) semantic-segmentation dataset."""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Callable, Optional, Sequence, Union

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from densevit.registry import DATASETS

from .bad_samples import BadSamplePolicy, too_many_bad
from .metainfo import ade20k_metainfo
from .transforms import build_pipeline

__all__ = ['ADE20KDataset']


@DATASETS.register_module()
class ADE20KDataset(BadSamplePolicy, BaseDataset):
    """ADE20K in its ``ADEChallengeData2016`` layout: every ``*.jpg`` under
    ``data_root/data_prefix['img_path']`` with the ``*.png`` of the same stem under
    ``data_root/data_prefix['seg_map_path']``. PNG labels are 0 (unlabeled) and 1..150; with
    ``reduce_zero_label`` (the default) ``LoadAnnotations`` maps them to 255 (ignore) and 0..149.

    Each data info holds ``img_path``, ``seg_map_path``, ``reduce_zero_label`` and ``seg_fields``.

    Args:
        data_root: Root that every path is relative to (the ``ADEChallengeData2016`` folder).
        data_prefix: ``img_path`` and ``seg_map_path`` folders, relative to ``data_root``.
        pipeline: Transforms (configs or callables) applied to each data info.
        reduce_zero_label: Map label 0 to 255 (ignore) and k to k-1.
        img_suffix: File suffix of the images.
        seg_map_suffix: File suffix of the label maps.
        test_mode: Evaluation mode (no effect on what is read here).
        metainfo: Overrides of ``{'classes', 'palette'}`` (150 ADE20K classes by default).
        lazy_init: Defer reading the file list until first use (mmengine ``BaseDataset``).
        serialize_data: Keep data infos as one serialized buffer (mmengine ``BaseDataset``).
        indices: Keep only these samples (or the first N) (mmengine ``BaseDataset``).
        max_refetch: Retries with another index when the pipeline returns None.
        on_bad_sample: ``'raise'`` or ``'skip'`` a bad image or label map (see
            ``densevit.datasets.bad_samples``); an image without its label map is found when the
            file list is read, and is then an error or a counted, logged drop.
        max_bad_fraction: Under ``'skip'``, the run fails once more than this fraction of the
            samples is bad.
    """

    METAINFO = ade20k_metainfo()

    def __init__(self, *, data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 reduce_zero_label: bool = True,
                 img_suffix: str = '.jpg',
                 seg_map_suffix: str = '.png',
                 test_mode: bool = False,
                 metainfo: Optional[dict] = None,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 indices: Optional[Union[int, Sequence[int]]] = None,
                 max_refetch: int = 1000,
                 on_bad_sample: str = 'raise',
                 max_bad_fraction: float = 0.01) -> None:
        if data_prefix is None:
            data_prefix = dict(img_path='images/training', seg_map_path='annotations/training')
        unknown = set(data_prefix) - {'img_path', 'seg_map_path'}
        if unknown or 'img_path' not in data_prefix:
            raise KeyError(f'ADE20KDataset data_prefix takes keys img_path and seg_map_path, '
                           f'got {sorted(data_prefix)}')
        self.reduce_zero_label = reduce_zero_label
        self.img_suffix = img_suffix
        self.seg_map_suffix = seg_map_suffix
        self.num_missing_labels = 0
        self._set_bad_sample_policy(on_bad_sample, max_bad_fraction)
        super().__init__(ann_file='', metainfo=metainfo, data_root=data_root,
                         data_prefix=dict(data_prefix), filter_cfg=None, indices=indices,
                         serialize_data=serialize_data, pipeline=build_pipeline(pipeline),
                         test_mode=test_mode, lazy_init=lazy_init, max_refetch=max_refetch)

    def load_data_list(self) -> list[dict]:
        img_dir = self.data_prefix['img_path']
        ann_dir = self.data_prefix.get('seg_map_path')
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f'ADE20K image folder {img_dir} does not exist '
                                    f'(data_root={self.data_root!r}, '
                                    f'data_prefix[img_path] relative to it)')
        names = sorted(n for n in os.listdir(img_dir) if n.endswith(self.img_suffix))
        if not names:
            raise FileNotFoundError(f'no *{self.img_suffix} images in {img_dir}')
        labels = set(os.listdir(ann_dir)) if ann_dir is not None and osp.isdir(ann_dir) else set()
        data_list, missing = [], []
        for name in names:
            info = dict(img_path=osp.join(img_dir, name), reduce_zero_label=self.reduce_zero_label,
                        seg_fields=[])
            if ann_dir is not None:
                label_name = name[:-len(self.img_suffix)] + self.seg_map_suffix
                info['seg_map_path'] = osp.join(ann_dir, label_name)
                if label_name not in labels:
                    missing.append(info['seg_map_path'])
                    continue
            data_list.append(info)
        self._check_missing_labels(missing, len(names))
        return data_list

    def _check_missing_labels(self, missing: list[str], total: int) -> None:
        """Raise on images without a label map, or (``'skip'``) log and count them."""
        self.num_missing_labels = len(missing)
        if not missing:
            return
        shown = ', '.join(missing[:5]) + (' ...' if len(missing) > 5 else '')
        if self.on_bad_sample == 'raise' or self.test_mode:
            raise FileNotFoundError(f'{len(missing)} of {total} label maps do not exist: {shown} '
                                    f'(images under {self.data_prefix["img_path"]} need a label '
                                    f'map of the same stem)')
        if too_many_bad(len(missing), total, self.max_bad_fraction):
            raise FileNotFoundError(f'{len(missing)} of {total} label maps do not exist, more '
                                    f'than max_bad_fraction={self.max_bad_fraction}: {shown}')
        print_log(f'ADE20KDataset: skipped {len(missing)} of {total} images without a label map '
                  f'(on_bad_sample="skip"): {shown}', logger='current', level=logging.WARNING)
