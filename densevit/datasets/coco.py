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

from .bad_samples import BadSamplePolicy, too_many_bad
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


class _AnnotationChecks:
    """Checks of single annotations while a COCO file is read: drops degenerate geometry with a
    counted warning, and raises on (``'raise'``) or counts and skips (``'skip'``) bad ones."""

    def __init__(self, ann_file: str, policy: str) -> None:
        self.ann_file = ann_file
        self.policy = policy
        self.dropped_boxes = 0
        self.dropped_polygons = 0
        self.bad_ids: dict[str, list] = {}

    @property
    def num_bad(self) -> int:
        return sum(len(ids) for ids in self.bad_ids.values())

    def bad(self, ann: dict, kind: str, detail: str = '') -> None:
        """Raise on, or count, annotation ``ann`` that ``kind`` (a phrase) says is bad."""
        if self.policy == 'raise':
            raise ValueError(f'COCO annotation file {self.ann_file}: annotation id {ann["id"]} '
                             f'{kind}{detail}')
        self.bad_ids.setdefault(kind, []).append(ann['id'])

    def segmentation(self, ann: dict, img: dict):
        """The annotation's segmentation made safe for pycocotools, or None when it is bad."""
        segm = ann['segmentation']
        if isinstance(segm, list):
            if not segm:
                self.bad(ann, 'has an empty segmentation')
                return None
            # pycocotools reads a 4-number polygon as a box: keep polygons of 3+ (x, y) points
            kept = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
            self.dropped_polygons += len(segm) - len(kept)
            if not kept:
                self.bad(ann, 'has no polygon with 3 or more points')
                return None
            return kept
        if isinstance(segm, dict) and 'counts' in segm and 'size' in segm:
            if list(segm['size']) != [img['height'], img['width']]:
                self.bad(ann, 'has an RLE whose size differs from its image\'s',
                         f': RLE size (h, w) {tuple(segm["size"])}, image {img["id"]} '
                         f'{(img["height"], img["width"])}')
                return None
            return segm
        self.bad(ann, 'has a segmentation that is neither polygons nor an RLE with counts and '
                 'size', f': {str(segm)[:60]}')
        return None

    def report(self, num_annotations: int, max_bad_fraction: float) -> None:
        """One warning per kind of drop or skip; an error if too many annotations are bad."""
        messages = []
        if self.dropped_boxes:
            messages.append(f'dropped {self.dropped_boxes} annotations whose box has zero or '
                            f'negative width or height')
        if self.dropped_polygons:
            messages.append(f'dropped {self.dropped_polygons} polygons with fewer than 3 points')
        for reason, ids in self.bad_ids.items():
            messages.append(f'skipped {len(ids)} bad annotations ({reason}; ids {ids[:5]}'
                            f'{" ..." if len(ids) > 5 else ""})')
        if too_many_bad(self.num_bad, num_annotations, max_bad_fraction):
            raise ValueError(f'COCO annotation file {self.ann_file}: {self.num_bad} of '
                             f'{num_annotations} annotations are bad, more than '
                             f'max_bad_fraction={max_bad_fraction}: {"; ".join(messages)}')
        for message in messages:
            message = f'{self.ann_file}: {message}'
            print_log(message, logger='current', level=logging.WARNING)
            warnings.warn(message, stacklevel=3)


@DATASETS.register_module()
class CocoDataset(BadSamplePolicy, BaseDataset):
    """COCO 2017 instances (``annotations/instances_*.json``) with images under
    ``data_root/data_prefix['img']``.

    Each data info holds ``img_id``, ``img_path``, ``height``, ``width`` and ``instances``, a list
    of ``{'bbox': [x1, y1, x2, y2], 'bbox_label': contiguous label, 'ignore_flag': iscrowd,
    'mask': raw COCO segmentation}`` (``mask`` only with ``with_mask``; decoded by
    ``LoadAnnotations``). Label i is ``metainfo['classes'][i]`` and COCO category
    ``metainfo['cat_ids'][i]``; a ``metainfo=dict(classes=subset)`` keeps only those categories.
    Annotations with zero or negative box width or height are dropped, with one warning counting
    them, and so are polygon parts with fewer than 3 points (as detectron2 does). An annotation
    that points at a missing image id or an unknown category id, or (``with_mask``) has an empty
    segmentation, no polygon of 3 or more points, or an RLE whose size is not its image's, is bad:
    an error naming the file and the annotation id under ``on_bad_sample='raise'``, a counted,
    logged skip under ``'skip'``. In training (not ``test_mode``) images without annotations are
    dropped when ``filter_cfg['filter_empty_gt']``, and images whose short side is below
    ``min_size``.

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
        on_bad_sample: ``'raise'`` or ``'skip'`` a bad image or annotation (see
            ``densevit.datasets.bad_samples``).
        max_bad_fraction: Under ``'skip'``, the run fails once more than this fraction of the
            images, or of the annotations, is bad.
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
                 max_refetch: int = 1000,
                 on_bad_sample: str = 'raise',
                 max_bad_fraction: float = 0.01) -> None:
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
        self.num_bad_annotations = 0
        self._set_bad_sample_policy(on_bad_sample, max_bad_fraction)
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
        all_cat_ids = {c['id'] for c in coco.dataset['categories']}
        images = {img['id']: img for img in coco.dataset['images']}
        if len(images) != len(coco.dataset['images']):
            raise ValueError(f'COCO annotation file {self.ann_file} has repeated image ids')
        checks = _AnnotationChecks(self.ann_file, self.on_bad_sample)
        per_image: dict = {img_id: [] for img_id in images}
        for ann in coco.dataset['annotations']:
            img = images.get(ann['image_id'])
            if img is None:
                checks.bad(ann, 'points at an image id not in images',
                           f' ({ann["image_id"]})')
                continue
            if ann['category_id'] not in all_cat_ids:
                checks.bad(ann, 'has a category id not in categories',
                           f' ({ann["category_id"]})')
                continue
            if ann['category_id'] not in cat_to_label:
                continue  # a category left out by metainfo classes
            x, y, w, h = ann['bbox']
            if w <= 0 or h <= 0:
                checks.dropped_boxes += 1
                continue
            inst = dict(bbox=[x, y, x + w, y + h], bbox_label=cat_to_label[ann['category_id']],
                        ignore_flag=bool(ann.get('iscrowd', 0)))
            if self.with_mask:
                inst['mask'] = checks.segmentation(ann, img)
                if inst['mask'] is None:
                    continue
            per_image[img['id']].append(inst)
        img_dir = self.data_prefix['img']
        data_list = [dict(img_id=img['id'], img_path=osp.join(img_dir, img['file_name']),
                          height=img['height'], width=img['width'],
                          instances=per_image[img['id']])
                     for img in coco.dataset['images']]
        checks.report(len(coco.dataset['annotations']), self.max_bad_fraction)
        self.num_dropped_boxes = checks.dropped_boxes
        self.num_bad_annotations = checks.num_bad
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
