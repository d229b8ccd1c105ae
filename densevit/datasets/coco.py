"""COCO-format instance detection / segmentation dataset, read with pycocotools."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os.path as osp
import warnings
from typing import Callable, Optional, Sequence, Union

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from pycocotools.coco import COCO

from densevit.registry import DATASETS

from .metainfo import COCO_CLASSES, COCO_PALETTE, coco_metainfo
from .transforms import build_pipeline

__all__ = ['CocoDataset']

_REQUIRED = {
    'top level': ('images', 'annotations', 'categories'),
    'image': ('id', 'file_name', 'height', 'width'),
    'annotation': ('id', 'image_id', 'category_id', 'bbox', 'iscrowd'),
    'category': ('id', 'name'),
}


def _load_coco_json(ann_file: str, with_mask: bool) -> COCO:
    """Read and check a COCO annotation file; errors name the file and what is wrong."""
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'COCO annotation file {ann_file} does not exist')
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f'COCO annotation file {ann_file} is not valid JSON: {e}') from None
    if not isinstance(data, dict):
        raise ValueError(f'COCO annotation file {ann_file} must hold a JSON object with keys '
                         f'{_REQUIRED["top level"]}, got {type(data).__name__}')
    missing = [k for k in _REQUIRED['top level'] if k not in data]
    if missing:
        raise ValueError(f'COCO annotation file {ann_file} lacks top-level keys {missing}')
    required = {'images': 'image', 'annotations': 'annotation', 'categories': 'category'}
    for key, kind in required.items():
        keys = _REQUIRED[kind] + (('segmentation',) if kind == 'annotation' and with_mask else ())
        for k, entry in enumerate(data[key]):
            lacking = [name for name in keys if name not in entry]
            if lacking:
                raise ValueError(f'COCO annotation file {ann_file}: {key}[{k}] lacks keys '
                                 f'{lacking} (needs {list(keys)})')
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


@DATASETS.register_module()
class CocoDataset(BaseDataset):
    """COCO 2017 instances (``annotations/instances_*.json``) with images under
    ``data_root/data_prefix['img']``.

    Each data info holds ``img_id``, ``img_path``, ``height``, ``width`` and ``instances``, a list
    of ``{'bbox': [x1, y1, x2, y2], 'bbox_label': contiguous label, 'ignore_flag': iscrowd,
    'mask': raw COCO segmentation}`` (``mask`` only with ``with_mask``; decoded by
    ``LoadAnnotations``). Label i is ``metainfo['classes'][i]`` and COCO category
    ``metainfo['cat_ids'][i]``; a ``metainfo=dict(classes=subset)`` keeps only those categories.
    Annotations with zero or negative box width or height are dropped, with one warning counting
    them. In training (not ``test_mode``) images without annotations are dropped when
    ``filter_cfg['filter_empty_gt']``, and images whose short side is below ``min_size``.

    Args:
        ann_file: Annotation JSON, relative to ``data_root`` unless absolute.
        data_root: Root that every path is relative to.
        data_prefix: ``img``: image folder relative to ``data_root``.
        pipeline: Transforms (configs or callables) applied to each data info.
        test_mode: Evaluation mode: keep every image.
        filter_cfg: ``filter_empty_gt`` (bool) and ``min_size`` (int) for training.
        with_mask: Keep the raw segmentation of each instance for mask loading.
        metainfo: Overrides of ``{'classes', 'palette'}``; ``cat_ids`` follows the classes.
        lazy_init: Defer reading the annotations until first use (mmengine ``BaseDataset``).
        serialize_data: Keep data infos as one serialized buffer (mmengine ``BaseDataset``).
        indices: Keep only these samples (or the first N) (mmengine ``BaseDataset``).
        max_refetch: Retries with another index when the pipeline returns None.
    """

    METAINFO = coco_metainfo()

    def __init__(self, *, ann_file: str,
                 data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 test_mode: bool = False,
                 filter_cfg: Optional[dict] = None,
                 with_mask: bool = False,
                 metainfo: Optional[dict] = None,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 indices: Optional[Union[int, Sequence[int]]] = None,
                 max_refetch: int = 1000) -> None:
        if data_prefix is None:
            data_prefix = dict(img='train2017/')
        if set(data_prefix) != {'img'}:
            raise KeyError(f'CocoDataset data_prefix takes the key img, got {sorted(data_prefix)}')
        if filter_cfg is None:
            filter_cfg = dict(filter_empty_gt=True, min_size=0)
        unknown = set(filter_cfg) - {'filter_empty_gt', 'min_size'}
        if unknown:
            raise KeyError(f'CocoDataset filter_cfg takes filter_empty_gt and min_size, got '
                           f'unknown keys {sorted(unknown)}')
        if metainfo is not None:
            metainfo = dict(metainfo)
            if 'classes' in metainfo and 'palette' not in metainfo:
                lookup = dict(zip(COCO_CLASSES, COCO_PALETTE))
                metainfo['palette'] = tuple(lookup.get(c, (128, 128, 128))
                                            for c in metainfo['classes'])
        self.with_mask = with_mask
        self.num_dropped_boxes = 0
        super().__init__(ann_file=ann_file, metainfo=metainfo, data_root=data_root,
                         data_prefix=dict(data_prefix), filter_cfg=dict(filter_cfg),
                         indices=indices, serialize_data=serialize_data,
                         pipeline=build_pipeline(pipeline), test_mode=test_mode,
                         lazy_init=lazy_init, max_refetch=max_refetch)

    def load_data_list(self) -> list[dict]:
        coco = _load_coco_json(self.ann_file, self.with_mask)
        classes = list(self._metainfo['classes'])
        name_to_id = {c['name']: c['id'] for c in coco.dataset['categories']}
        missing = [c for c in classes if c not in name_to_id]
        if missing:
            raise KeyError(f'classes {missing} are not categories of {self.ann_file} '
                           f'(it has {sorted(name_to_id)})')
        cat_ids = [name_to_id[c] for c in classes]
        self._metainfo['cat_ids'] = tuple(cat_ids)
        cat_to_label = {cat_id: i for i, cat_id in enumerate(cat_ids)}
        img_dir = self.data_prefix['img']
        data_list, dropped = [], 0
        for img in coco.dataset['images']:
            instances = []
            for ann in coco.imgToAnns.get(img['id'], []):
                if ann['category_id'] not in cat_to_label:
                    continue
                x, y, w, h = ann['bbox']
                if w <= 0 or h <= 0:
                    dropped += 1
                    continue
                inst = dict(bbox=[x, y, x + w, y + h], bbox_label=cat_to_label[ann['category_id']],
                            ignore_flag=bool(ann.get('iscrowd', 0)))
                if self.with_mask:
                    inst['mask'] = ann['segmentation']
                instances.append(inst)
            data_list.append(dict(img_id=img['id'], img_path=osp.join(img_dir, img['file_name']),
                                  height=img['height'], width=img['width'], instances=instances))
        self.num_dropped_boxes = dropped
        if dropped:
            message = (f'{self.ann_file}: dropped {dropped} annotations whose box has zero or '
                       f'negative width or height')
            print_log(message, logger='current', level=logging.WARNING)
            warnings.warn(message, stacklevel=2)
        return data_list

    def filter_data(self) -> list[dict]:
        if self.test_mode:
            return self.data_list
        filter_empty = self.filter_cfg.get('filter_empty_gt', True)
        min_size = self.filter_cfg.get('min_size', 0)
        kept = [info for info in self.data_list
                if (not filter_empty or info['instances'])
                and min(info['width'], info['height']) >= min_size]
        if self.data_list and not kept:
            raise ValueError(f'no image of {self.ann_file} is left after filtering with '
                             f'filter_cfg={self.filter_cfg} and classes '
                             f'{list(self._metainfo["classes"])}')
        return kept

    def get_cat_ids(self, idx: int) -> list[int]:
        """Contiguous labels of the instances of sample ``idx`` (for class-aware samplers)."""
        return [inst['bbox_label'] for inst in self.get_data_info(idx)['instances']]
