"""ADE20K (SceneParsing, 150 classes) semantic-segmentation dataset."""
from __future__ import annotations

import os
import os.path as osp
from typing import Callable, Optional, Sequence, Union

from mmengine.dataset import BaseDataset

from densevit.registry import DATASETS

from .metainfo import ade20k_metainfo
from .transforms import build_pipeline

__all__ = ['ADE20KDataset']


@DATASETS.register_module()
class ADE20KDataset(BaseDataset):
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
                 max_refetch: int = 1000) -> None:
        if data_prefix is None:
            data_prefix = dict(img_path='images/training', seg_map_path='annotations/training')
        unknown = set(data_prefix) - {'img_path', 'seg_map_path'}
        if unknown or 'img_path' not in data_prefix:
            raise KeyError(f'ADE20KDataset data_prefix takes keys img_path and seg_map_path, '
                           f'got {sorted(data_prefix)}')
        self.reduce_zero_label = reduce_zero_label
        self.img_suffix = img_suffix
        self.seg_map_suffix = seg_map_suffix
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
        data_list = []
        for name in names:
            info = dict(img_path=osp.join(img_dir, name), reduce_zero_label=self.reduce_zero_label,
                        seg_fields=[])
            if ann_dir is not None:
                stem = name[:-len(self.img_suffix)]
                info['seg_map_path'] = osp.join(ann_dir, stem + self.seg_map_suffix)
            data_list.append(info)
        return data_list
