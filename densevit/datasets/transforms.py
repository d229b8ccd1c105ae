"""Data pipeline transforms for segmentation and detection (TRANSFORMS registry).

Each transform takes and returns a results dict with the keys below; geometric work on images,
label maps, instance masks and boxes is done by albumentations (one ``A.Compose`` per step, so
boxes, masks and label maps move together). Random parameters are drawn from numpy's global
generator, which mmengine seeds (``randomness=dict(seed=...)``) per worker.

Keys: ``img`` (H, W, 3) uint8 RGB, ``img_path``, ``ori_shape`` (h, w) of the file, ``img_shape``
(h, w) now (the valid part; padding does not change it), ``pad_shape`` (h, w) after padding,
``scale_factor`` (w_scale, h_scale) from ori to now, ``flip``, ``flip_direction``;
segmentation: ``seg_map_path``, ``reduce_zero_label``, ``gt_seg_map`` (H, W) uint8 (255 = ignore);
detection: ``img_id``, ``instances`` (from the dataset), ``gt_bboxes`` (N, 4) float32 xyxy,
``gt_bboxes_labels`` (N,) int64, ``gt_masks`` (N, H, W) uint8, ``gt_ignore_flags`` (N,) bool.
"""
from __future__ import annotations

import os.path as osp
import warnings
from typing import Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from densevit.registry import TRANSFORMS
from densevit.structures import DataSample, InstanceData, PixelData

__all__ = ['build_pipeline', 'read_image', 'LoadImageFromFile', 'LoadAnnotations', 'Resize',
           'RandomResize',
           'RandomCrop', 'RandomFlip', 'PhotoMetricDistortion', 'LargeScaleJitter', 'Pad',
           'PackSegInputs', 'PackDetInputs', 'ClipBoxes', 'RandomChoiceResize', 'RandomSizeCrop',
           'RandomChoice', 'adjust_saturation', 'shift_hue', 'pil_resize']

_BBOX_PARAMS = dict(format='pascal_voc', label_fields=['bbox_ids'], clip=True)


def build_pipeline(pipeline: Sequence) -> list:
    """Build a list of transform configs (dicts with ``type``) or callables with densevit's
    TRANSFORMS registry, so a dataset's pipeline resolves densevit names without relying on the
    Runner's ``default_scope``."""
    built = []
    for t in pipeline:
        if isinstance(t, dict):
            built.append(TRANSFORMS.build(t))
        elif callable(t):
            built.append(t)
        else:
            raise TypeError(f'pipeline entries must be dicts with a type or callables, got {t!r}')
    return built


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f'{name} must be an int or a pair of ints, got {value!r}')


def _albu_seed() -> int:
    return int(np.random.randint(0, 2**31 - 1))


def _apply_geometric(results: dict, transforms: list) -> dict:
    """Run albumentations ``transforms`` on the image and every annotation in ``results``.

    Instances whose box or mask vanishes are dropped together with their label, ignore flag and
    mask (albumentations tracks which boxes survive through the ``bbox_ids`` label field).
    """
    has_boxes = 'gt_bboxes' in results
    compose = A.Compose(transforms, bbox_params=A.BboxParams(**_BBOX_PARAMS) if has_boxes else None,
                        seed=_albu_seed())
    data = dict(image=results['img'])
    if 'gt_seg_map' in results:
        data['mask'] = results['gt_seg_map']
    masks = results.get('gt_masks')
    if masks is not None and len(masks):
        data['masks'] = masks
    if has_boxes:
        boxes = np.asarray(results['gt_bboxes'], np.float32).reshape(-1, 4)
        data['bboxes'] = boxes
        data['bbox_ids'] = np.arange(len(boxes))
    out = compose(**data)
    img = out['image']
    results['img'] = img
    h, w = img.shape[:2]
    if 'gt_seg_map' in results:
        results['gt_seg_map'] = out['mask']
    if masks is not None:
        new_masks = np.asarray(out['masks'], np.uint8) if len(masks) else np.zeros((0, h, w),
                                                                                    np.uint8)
    if has_boxes:
        keep = np.asarray(out['bbox_ids'], np.int64).reshape(-1)
        new_boxes = np.asarray(out['bboxes'], np.float32).reshape(-1, 4)
        if masks is not None:
            new_masks = new_masks[keep]
        valid = (new_boxes[:, 2] > new_boxes[:, 0]) & (new_boxes[:, 3] > new_boxes[:, 1])
        if masks is not None:
            valid &= new_masks.any(axis=(1, 2))
        keep, new_boxes = keep[valid], new_boxes[valid]
        if masks is not None:
            new_masks = new_masks[valid]
            # A crop can cut a mask so that its remaining part is smaller than the clipped box,
            # and resampling moves mask edges by up to a pixel: with masks, the box follows the
            # mask (its tight box), as detectron2's recompute_boxes does.
            new_boxes = _mask_boxes(new_masks)
        results['gt_bboxes'] = new_boxes
        for key in ('gt_bboxes_labels', 'gt_ignore_flags'):
            if key in results:
                results[key] = np.asarray(results[key])[keep]
    if masks is not None:
        results['gt_masks'] = new_masks
    return results


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy tight boxes of (N, H, W) non-empty masks (x2, y2 exclusive)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for k, m in enumerate(masks):
        cols = np.flatnonzero(m.any(axis=0))
        rows = np.flatnonzero(m.any(axis=1))
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _pad_bottom_right(results: dict, height: int, width: int, pad_val: float,
                      seg_pad_val: int) -> dict:
    """Pad image and annotations at the bottom and right to (height, width); boxes are unchanged.

    Written with numpy rather than ``A.PadIfNeeded`` because albumentations pads every mask
    target with one value, while label maps need ``seg_pad_val`` (ignore) and instance masks 0.
    """
    img = results['img']
    h, w = img.shape[:2]
    dh, dw = max(height - h, 0), max(width - w, 0)
    if dh == 0 and dw == 0:
        results['pad_shape'] = (h, w)
        return results
    results['img'] = np.pad(img, ((0, dh), (0, dw), (0, 0)), constant_values=pad_val)
    if 'gt_seg_map' in results:
        results['gt_seg_map'] = np.pad(results['gt_seg_map'], ((0, dh), (0, dw)),
                                       constant_values=seg_pad_val)
    if 'gt_masks' in results:
        results['gt_masks'] = np.pad(results['gt_masks'], ((0, 0), (0, dh), (0, dw)))
    results['pad_shape'] = results['img'].shape[:2]
    return results


def pil_resize(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """(H, W, C) uint8 -> (new_h, new_w, C) with PIL's bilinear filter, as detectron2's
    ``ResizeTransform`` resizes uint8 images. PIL widens the filter by the reduction factor when
    shrinking, so a downscale is antialiased; OpenCV's INTER_LINEAR samples 2x2 pixels and aliases.
    """
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BILINEAR))


def _resize_to(results: dict, new_h: int, new_w: int, *, pil_image: bool = False) -> dict:
    """Resize everything to (new_h, new_w): bilinear image (OpenCV, or PIL's antialiased filter
    with ``pil_image``), nearest label maps and masks (so they gain no new values)."""
    h, w = results['img'].shape[:2]
    if (new_h, new_w) != (h, w):
        original = results['img']
        _apply_geometric(results, [A.Resize(new_h, new_w, interpolation=cv2.INTER_LINEAR,
                                            mask_interpolation=cv2.INTER_NEAREST_EXACT)])
        if pil_image:
            results['img'] = pil_resize(original, new_h, new_w)
    sw, sh = results.get('scale_factor', (1.0, 1.0))
    results['scale_factor'] = (sw * new_w / w, sh * new_h / h)
    results['img_shape'] = (new_h, new_w)
    results['pad_shape'] = (new_h, new_w)
    return results


def _rescaled_size(h: int, w: int, scale: tuple[int, int], keep_ratio: bool) -> tuple[int, int]:
    """(new_h, new_w) for a ``scale`` of (w, h); with ``keep_ratio`` the long side fits
    max(scale) and the short side fits min(scale), keeping the aspect ratio."""
    if not keep_ratio:
        return scale[1], scale[0]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


# ------------------------------------------------------------------------------------ loading

def _jpeg_is_truncated(data: bytes) -> bool:
    """Whether JPEG bytes stop before the image's end-of-image marker (FFD9).

    OpenCV's ``imread`` decodes a truncated JPEG without error and fills the missing rows with
    grey (libjpeg only prints "Premature end of JPEG file"). Inside entropy-coded data every FF
    byte is followed by 00 or a restart marker, so FFD9 after the last start-of-scan (FFDA) marks
    a complete image; bytes appended after it (some cameras do) are allowed. A file cut before
    its first scan has no FFDA at all.
    """
    last_scan = data.rfind(b'\xff\xda')
    return last_scan < 0 or data.rfind(b'\xff\xd9') < last_scan


def read_image(path: str) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, upright, or raise an error naming the file.

    Grayscale is replicated to three channels, the alpha channel of RGBA is dropped, palette
    PNGs are expanded to their colours, 16-bit images keep their high byte (value >> 8) and an
    EXIF orientation tag is applied (the picture is returned as a viewer shows it, as PIL's
    ``ImageOps.exif_transpose`` and detectron2 do), all by OpenCV's ``IMREAD_COLOR``. A missing,
    empty, truncated (JPEG) or undecodable file raises ``FileNotFoundError`` or ``OSError``.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'image file {path} does not exist')
    with open(path, 'rb') as f:
        data = f.read()
    if not data:
        raise OSError(f'image file {path} is empty (0 bytes)')
    if data[:2] == b'\xff\xd8' and _jpeg_is_truncated(data):
        raise OSError(f'image file {path} is a truncated JPEG (no end-of-image marker after its '
                      f'last scan; {len(data)} bytes)')
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f'image file {path} could not be decoded (not a readable image, or '
                      f'damaged; starts with {data[:8]!r})')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@TRANSFORMS.register_module()
class LoadImageFromFile:
    """Read ``results['img_path']`` as an (H, W, 3) uint8 RGB image (see :func:`read_image`:
    upright, three channels, bad files named) and set ``ori_shape``, ``img_shape``,
    ``pad_shape``, ``scale_factor`` (1, 1) and ``flip`` False."""

    def __call__(self, results: dict) -> dict:
        img = read_image(results['img_path'])
        h, w = img.shape[:2]
        results.update(img=img, ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w),
                       scale_factor=(1.0, 1.0), flip=False, flip_direction=None)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


def _decode_coco_mask(segmentation, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation.get('counts'), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


@TRANSFORMS.register_module()
class LoadAnnotations:
    """Load the annotations of a sample at its original size (``ori_shape``).

    Segmentation (``with_seg``): reads ``seg_map_path`` (uint8 PNG) into ``gt_seg_map``, checks its
    size against the image's and its values against 0..``max_seg_label`` and 255, then applies
    ``reduce_zero_label`` (0 -> 255, k -> k - 1) when the results (or this transform) ask for it.
    Detection (only for samples that carry ``instances``; a segmentation sample without them
    skips this part): turns the dataset's ``instances`` into ``gt_bboxes``, ``gt_bboxes_labels``,
    ``gt_ignore_flags`` (``with_bbox``) and ``gt_masks`` decoded with pycocotools (``with_mask``).

    Args:
        with_bbox: Load boxes, labels and ignore flags.
        with_mask: Load instance masks.
        with_seg: Load the semantic label map.
        reduce_zero_label: Overrides ``results['reduce_zero_label']`` when not None.
        max_seg_label: Largest label value allowed in the PNG besides 255 (150 for ADE20K);
            None skips the check.
    """

    def __init__(self, *, with_bbox: bool = True, with_mask: bool = False, with_seg: bool = False,
                 reduce_zero_label: Optional[bool] = None,
                 max_seg_label: Optional[int] = 150) -> None:
        self.with_bbox = with_bbox
        self.with_mask = with_mask
        self.with_seg = with_seg
        self.reduce_zero_label = reduce_zero_label
        self.max_seg_label = max_seg_label

    def __call__(self, results: dict) -> dict:
        if self.with_seg:
            self._load_seg(results)
        if self.with_bbox or self.with_mask:
            if 'instances' in results:
                self._load_instances(results)
            elif not self.with_seg:
                raise KeyError(f'LoadAnnotations(with_bbox={self.with_bbox}, with_mask='
                               f'{self.with_mask}) needs the dataset\'s "instances" for image '
                               f'{results.get("img_path")}; a segmentation pipeline should '
                               f'pass with_bbox=False, with_seg=True')
        return results

    def _load_seg(self, results: dict) -> None:
        path = results['seg_map_path']
        if not osp.isfile(path):
            raise FileNotFoundError(f'label map {path} does not exist '
                                    f'(for image {results.get("img_path")})')
        seg = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if seg is None:
            raise OSError(f'label map {path} could not be decoded')
        if seg.ndim != 2 or seg.dtype != np.uint8:
            raise ValueError(f'label map {path} must be a single-channel uint8 PNG of class '
                             f'ids, got shape {seg.shape} dtype {seg.dtype} (an RGB or palette '
                             f'PNG holds colours: convert it to one channel of ids)')
        ori = tuple(results.get('ori_shape', results['img'].shape[:2]))
        if seg.shape != ori:
            raise ValueError(f'label map {path} has size (h, w) {seg.shape}, but image '
                             f'{results.get("img_path")} has {ori}; they must match')
        if self.max_seg_label is not None:
            values = np.unique(seg)
            bad = values[(values > self.max_seg_label) & (values != 255)]
            if len(bad):
                raise ValueError(f'label map {path} (image {results.get("img_path")}) has values '
                                 f'{bad.tolist()} outside 0..{self.max_seg_label} and 255')
        reduce = self.reduce_zero_label
        if reduce is None:
            reduce = results.get('reduce_zero_label', False)
        if reduce:
            seg = seg.copy()
            seg[seg == 0] = 255
            seg = seg - 1
            seg[seg == 254] = 255
        results['gt_seg_map'] = seg
        results['reduce_zero_label'] = bool(reduce)
        results.setdefault('seg_fields', []).append('gt_seg_map')

    def _load_instances(self, results: dict) -> None:
        instances = results.get('instances', [])
        n = len(instances)
        shape = results.get('ori_shape')
        if shape is None and 'img' in results:
            shape = results['img'].shape[:2]
        h, w = tuple(shape) if shape is not None else (results['height'], results['width'])
        if 'height' in results and (results['height'], results['width']) != (h, w):
            # e.g. an EXIF-rotated file whose annotation was drawn on the stored (sideways)
            # pixels: the boxes would land in the wrong place
            raise ValueError(f'image {results.get("img_path")} has size (h, w) {(h, w)} as loaded '
                             f'(upright, EXIF orientation applied), but its annotation (img_id '
                             f'{results.get("img_id")}) says '
                             f'{(results["height"], results["width"])}')
        if self.with_bbox:
            results['gt_bboxes'] = np.array([i['bbox'] for i in instances],
                                            np.float32).reshape(n, 4)
            results['gt_bboxes_labels'] = np.array([i['bbox_label'] for i in instances], np.int64)
            results['gt_ignore_flags'] = np.array([i['ignore_flag'] for i in instances], bool)
        if self.with_mask:
            masks = np.zeros((n, h, w), np.uint8)
            for k, inst in enumerate(instances):
                masks[k] = _decode_coco_mask(inst['mask'], h, w)
            results['gt_masks'] = masks

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(with_bbox={self.with_bbox}, with_mask={self.with_mask}, '
                f'with_seg={self.with_seg}, reduce_zero_label={self.reduce_zero_label}, '
                f'max_seg_label={self.max_seg_label})')


# ---------------------------------------------------------------------------------- geometry

@TRANSFORMS.register_module()
class Resize:
    """Resize to ``scale`` = (w, h); with ``keep_ratio`` the long side fits max(scale) and the
    short side fits min(scale). Updates ``img_shape`` and ``scale_factor``.

    Args:
        scale: Target (w, h), or one int for a square.
        keep_ratio: Keep the aspect ratio (see above) instead of resizing to exactly ``scale``.
    """

    def __init__(self, *, scale, keep_ratio: bool = True) -> None:
        self.scale = _pair(scale, 'Resize scale')
        self.keep_ratio = keep_ratio

    def __call__(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        new_h, new_w = _rescaled_size(h, w, self.scale, self.keep_ratio)
        return _resize_to(results, new_h, new_w)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(scale={self.scale}, keep_ratio={self.keep_ratio})'


@TRANSFORMS.register_module()
class RandomResize:
    """Resize to ``scale`` (w, h) times a ratio drawn uniformly from ``ratio_range``.

    Args:
        scale: Base (w, h), or one int for a square.
        ratio_range: (min, max) of the random ratio.
        keep_ratio: As in ``Resize``.
    """

    def __init__(self, *, scale, ratio_range: tuple[float, float] = (0.5, 2.0),
                 keep_ratio: bool = True) -> None:
        self.scale = _pair(scale, 'RandomResize scale')
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f'RandomResize ratio_range must be 0 < min <= max, got {ratio_range}')
        self.ratio_range = tuple(ratio_range)
        self.keep_ratio = keep_ratio

    def __call__(self, results: dict) -> dict:
        ratio = np.random.uniform(*self.ratio_range)
        scale = (max(1, int(self.scale[0] * ratio)), max(1, int(self.scale[1] * ratio)))
        h, w = results['img'].shape[:2]
        return _resize_to(results, *_rescaled_size(h, w, scale, self.keep_ratio))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(scale={self.scale}, ratio_range={self.ratio_range}, '
                f'keep_ratio={self.keep_ratio})')


@TRANSFORMS.register_module()
class RandomCrop:
    """Crop a random window of ``crop_size`` (h, w), or of the whole side where the image is
    shorter: nothing is padded here, so the output is at most ``crop_size`` (mmseg 1.x's
    RandomCrop). The data preprocessor pads the batch to the crop size after normalisation
    (image 0, labels the ignore index), so photometric transforms never see padding. With a label
    map and ``cat_max_ratio < 1``, up to 10 windows are checked and the first with more than one
    labeled class, none of them covering ``cat_max_ratio`` or more of the labeled pixels, is kept;
    if none qualifies, an 11th window is drawn and kept (mmseg's loop, exactly).

    Args:
        crop_size: (h, w) of the crop, or one int.
        cat_max_ratio: Largest share of the labeled pixels one class may cover.
        ignore_index: Label ignored when counting.
    """

    max_tries = 10

    def __init__(self, *, crop_size, cat_max_ratio: float = 0.75, ignore_index: int = 255) -> None:
        self.crop_size = _pair(crop_size, 'RandomCrop crop_size')
        if min(self.crop_size) <= 0:
            raise ValueError(f'RandomCrop crop_size must be positive, got {self.crop_size}')
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _window(self, h: int, w: int) -> tuple[int, int]:
        ch, cw = self.crop_size
        return (int(np.random.randint(0, max(h - ch, 0) + 1)),
                int(np.random.randint(0, max(w - cw, 0) + 1)))

    def _largest_share(self, seg: np.ndarray) -> float:
        _, counts = np.unique(seg[seg != self.ignore_index], return_counts=True)
        if len(counts) <= 1:
            return 1.0
        return float(counts.max() / counts.sum())

    def __call__(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        valid_h, valid_w = results.get('img_shape', (h, w))
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        y0, x0 = self._window(h, w)
        seg = results.get('gt_seg_map')
        if seg is not None and self.cat_max_ratio < 1.0:
            # mmseg's loop: check up to max_tries windows; after the last failed check the next
            # window is drawn and kept unchecked
            for _ in range(self.max_tries):
                if self._largest_share(seg[y0:y0 + ch, x0:x0 + cw]) < self.cat_max_ratio:
                    break
                y0, x0 = self._window(h, w)
        if (h, w) != (ch, cw):
            _apply_geometric(results, [A.Crop(x_min=x0, y_min=y0, x_max=x0 + cw, y_max=y0 + ch)])
        results['img_shape'] = (max(0, min(valid_h - y0, ch)), max(0, min(valid_w - x0, cw)))
        results['pad_shape'] = (ch, cw)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(crop_size={self.crop_size}, '
                f'cat_max_ratio={self.cat_max_ratio}, ignore_index={self.ignore_index})')


@TRANSFORMS.register_module()
class RandomFlip:
    """Flip with probability ``prob`` (horizontal by default); sets ``flip``, ``flip_direction``.

    Args:
        prob: Probability of flipping.
        direction: 'horizontal' or 'vertical'.
    """

    _flips = {'horizontal': A.HorizontalFlip, 'vertical': A.VerticalFlip}

    def __init__(self, *, prob: float = 0.5, direction: str = 'horizontal') -> None:
        if direction not in self._flips:
            raise ValueError(f'RandomFlip direction must be one of {sorted(self._flips)}, '
                             f'got {direction!r}')
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'RandomFlip prob must be in [0, 1], got {prob}')
        self.prob = prob
        self.direction = direction

    def __call__(self, results: dict) -> dict:
        flip = bool(np.random.rand() < self.prob)
        if flip:
            _apply_geometric(results, [self._flips[self.direction](p=1.0)])
        results['flip'] = flip
        results['flip_direction'] = self.direction if flip else None
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob}, direction={self.direction!r})'


@TRANSFORMS.register_module()
class LargeScaleJitter:
    """Large-scale jitter as ViTDet trains with it (detectron2's ``ResizeScale`` then
    ``FixedSizeCrop(pad=False)``): draw ``ratio`` uniform in ``ratio_range``, resize keeping the
    aspect ratio by ``min(ratio * scale_h / h, ratio * scale_w / w)`` (sizes rounded half to even,
    as ``np.round``; the image with PIL's antialiased bilinear filter, label maps and masks
    nearest), then crop a window of at most ``scale``: one ``u`` uniform in [0, 1) places it at
    ``round(u * (h - scale_h), u * (w - scale_w))`` (clipped at 0). Nothing is padded: the data
    preprocessor pads the batch to ``scale`` after normalisation (``size=scale``). Boxes are
    scaled and clipped; instances whose box or mask vanishes are dropped.

    Args:
        scale: Target (h, w), or one int.
        ratio_range: (min, max) of the random scale ratio.
    """

    def __init__(self, *, scale=(1024, 1024), ratio_range: tuple[float, float] = (0.1, 2.0)
                 ) -> None:
        self.scale = _pair(scale, 'LargeScaleJitter scale')
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f'LargeScaleJitter ratio_range must be 0 < min <= max, '
                             f'got {ratio_range}')
        self.ratio_range = tuple(ratio_range)

    def __call__(self, results: dict) -> dict:
        th, tw = self.scale
        ratio = np.random.uniform(*self.ratio_range)
        h, w = results['img'].shape[:2]
        factor = min(ratio * th / h, ratio * tw / w)
        new_h, new_w = (max(1, int(v)) for v in np.round(np.multiply((h, w), factor)))
        _resize_to(results, new_h, new_w, pil_image=True)
        u = np.random.uniform(0.0, 1.0)  # one draw for both offsets, as FixedSizeCrop
        y0, x0 = (int(v) for v in np.round(np.multiply((max(new_h - th, 0),
                                                         max(new_w - tw, 0)), u)))
        ch, cw = min(th, new_h), min(tw, new_w)
        if (ch, cw) != (new_h, new_w):
            _apply_geometric(results, [A.Crop(x_min=x0, y_min=y0, x_max=x0 + cw, y_max=y0 + ch)])
        results['img_shape'] = (ch, cw)
        results['pad_shape'] = (ch, cw)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(scale={self.scale}, ratio_range={self.ratio_range})'


# ------------------------------------------------------------ DETR multi-scale augmentation
# DETR's training augmentation (facebookresearch/detr datasets/coco.py, kept by Deformable DETR,
# DINO and detrex): flip, then with probability 1/2 either a short-side resize to one of
# 480..800 (long side at most 1333), or a short-side resize to 400 / 500 / 600, a random crop of
# a side drawn in [384, 600] and the same 480..800 resize:
#   RandomFlip, RandomChoice([[RandomChoiceResize(480..800, 1333)],
#                             [RandomChoiceResize(400/500/600), RandomSizeCrop(384, 600),
#                              RandomChoiceResize(480..800, 1333)]])

def _short_side_size(h: int, w: int, short: int,
                     max_size: Optional[int]) -> tuple[int, int]:
    """(new_h, new_w) with the short side ``short`` and the aspect ratio kept, the long side at
    most ``max_size``, as DETR's ``get_size_with_aspect_ratio``: when short * (long / short of the
    input) would pass ``max_size``, the target short side becomes round(max_size * input short /
    input long); the new long side is floored. DETR's rounding can then put the long side a pixel
    or two past ``max_size`` for very elongated images; here it is capped at ``max_size``."""
    lo, hi = min(h, w), max(h, w)
    if max_size is not None and hi / lo * short > max_size:
        short = int(round(max_size * lo / hi))
    if lo == short:
        return h, w
    long_side = int(short * hi / lo)
    if max_size is not None:
        long_side = min(long_side, max_size)
    short, long_side = max(1, short), max(1, long_side)
    return (short, long_side) if h <= w else (long_side, short)


def _clip_boxes(results: dict, h: int, w: int) -> int:
    """Clip ``gt_bboxes`` to an (h, w) image and drop those of zero width or height, with their
    labels, ignore flags and masks; returns how many were dropped."""
    if 'gt_bboxes' not in results:
        return 0
    boxes = np.asarray(results['gt_bboxes'], np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    results['gt_bboxes'] = boxes[keep]
    dropped = int((~keep).sum())
    if dropped:
        for key in ('gt_bboxes_labels', 'gt_ignore_flags', 'gt_masks'):
            if key in results:
                results[key] = np.asarray(results[key])[keep]
    return dropped


@TRANSFORMS.register_module()
class ClipBoxes:
    """Clip ``gt_bboxes`` to the image (``img_shape``) and drop the boxes left with zero width or
    height, with their labels, ignore flags and masks, as DETR's ``ConvertCocoPolysToMask`` does
    when it reads the annotations. Put it right after ``LoadAnnotations``: a box lying wholly
    outside the image cannot reach albumentations, which rejects degenerate boxes.

    The first drop is reported with one warning (per process; a data loader worker is one);
    ``num_dropped`` counts every box this instance has dropped.
    """

    def __init__(self) -> None:
        self.num_dropped = 0

    def __call__(self, results: dict) -> dict:
        h, w = results.get('img_shape', results['img'].shape[:2])[:2]
        dropped = _clip_boxes(results, h, w)
        if dropped and not self.num_dropped:
            warnings.warn(f'ClipBoxes: {dropped} box(es) of image '
                          f'{results.get("img_path", "<unknown>")} lie outside it ({h}x{w}) and '
                          f'were dropped; later drops are only counted (ClipBoxes.num_dropped)',
                          stacklevel=2)
        self.num_dropped += dropped
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


@TRANSFORMS.register_module()
class RandomChoiceResize:
    """Resize so the short side is one of ``scales`` (drawn uniformly), keeping the aspect ratio,
    with the long side at most ``max_size`` (DETR's ``RandomResize(sizes, max_size)``; see
    ``_short_side_size``). Boxes are clipped to the image first and those of zero area dropped.

    Args:
        scales: Candidate short-side lengths in pixels.
        max_size: Largest long side; None for no limit.
    """

    def __init__(self, *, scales: Sequence[int], max_size: Optional[int] = None) -> None:
        scales = tuple(int(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f'RandomChoiceResize scales must be positive short-side lengths, '
                             f'got {scales}')
        if max_size is not None and max_size < max(scales):
            raise ValueError(f'RandomChoiceResize max_size {max_size} is below the largest '
                             f'scale {max(scales)}')
        self.scales = scales
        self.max_size = max_size

    def __call__(self, results: dict) -> dict:
        short = self.scales[np.random.randint(len(self.scales))]
        h, w = results['img'].shape[:2]
        _clip_boxes(results, h, w)  # albumentations rejects a box wholly outside the image
        return _resize_to(results, *_short_side_size(h, w, short, self.max_size))

    def __repr__(self) -> str:
        return f'{type(self).__name__}(scales={self.scales}, max_size={self.max_size})'


@TRANSFORMS.register_module()
class RandomSizeCrop:
    """Crop a window of random size: width uniform in [min_size, min(W, max_size)], height
    uniform in [min_size, min(H, max_size)] (integers, both ends included), at a uniformly random
    position (DETR's ``RandomSizeCrop``). A side shorter than ``min_size`` is kept whole. Boxes are
    clipped to the window; instances whose box or mask is left empty are dropped; with masks each
    box becomes its mask's tight box. ``scale_factor`` is unchanged.

    Args:
        min_size: Smallest crop side.
        max_size: Largest crop side.
    """

    def __init__(self, *, min_size: int, max_size: int) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f'RandomSizeCrop needs 0 < min_size <= max_size, got '
                             f'min_size={min_size}, max_size={max_size}')
        self.min_size = int(min_size)
        self.max_size = int(max_size)

    def _side(self, length: int) -> int:
        return int(np.random.randint(min(self.min_size, length),
                                     min(length, self.max_size) + 1))

    def __call__(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        valid_h, valid_w = results.get('img_shape', (h, w))[:2]
        cw = self._side(w)  # width first, then height, as DETR draws them
        ch = self._side(h)
        y0 = int(np.random.randint(0, h - ch + 1))
        x0 = int(np.random.randint(0, w - cw + 1))
        _clip_boxes(results, h, w)
        if (ch, cw) != (h, w):
            _apply_geometric(results, [A.Crop(x_min=x0, y_min=y0, x_max=x0 + cw, y_max=y0 + ch)])
        results['img_shape'] = (max(0, min(valid_h - y0, ch)), max(0, min(valid_w - x0, cw)))
        results['pad_shape'] = (ch, cw)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})'


@TRANSFORMS.register_module()
class RandomChoice:
    """Apply one of several transform lists, chosen at random (DETR's ``RandomSelect``).

    Args:
        transforms: The branches: each a list of transform configs (dicts with ``type``) or
            callables, built with the TRANSFORMS registry.
        probs: Probability of each branch; None for uniform.
    """

    def __init__(self, *, transforms: Sequence[Sequence], probs: Optional[Sequence[float]] = None
                 ) -> None:
        branches = list(transforms)
        if not branches:
            raise ValueError('RandomChoice needs at least one branch of transforms')
        for k, branch in enumerate(branches):
            if isinstance(branch, dict) or not isinstance(branch, (list, tuple)):
                raise TypeError(f'RandomChoice transforms[{k}] must be a list of transforms (a '
                                f'branch), got {branch!r}; wrap a single transform in a list')
        self.transforms = [build_pipeline(branch) for branch in branches]
        if probs is not None:
            probs = tuple(float(p) for p in probs)
            if len(probs) != len(branches) or min(probs) < 0 or not np.isclose(sum(probs), 1):
                raise ValueError(f'RandomChoice probs must be {len(branches)} non-negative '
                                 f'numbers summing to 1, got {probs}')
        self.probs = probs

    def __call__(self, results: dict) -> Optional[dict]:
        if self.probs is None:
            index = int(np.random.randint(len(self.transforms)))
        else:
            index = int(np.random.choice(len(self.transforms), p=self.probs))
        for transform in self.transforms[index]:
            results = transform(results)
            if results is None:  # a transform rejected the sample (mmengine: refetch)
                return None
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(transforms={self.transforms}, probs={self.probs})'


@TRANSFORMS.register_module()
class Pad:
    """Pad at the bottom and right to ``size`` (h, w) or to multiples of ``size_divisor``
    (exactly one of them). ``img_shape`` keeps the unpadded size; ``pad_shape`` gets the new one.

    Args:
        size: Target (h, w), or one int.
        size_divisor: Pad each side up to a multiple of this.
        pad_val: Image pad value.
        seg_pad_val: Label-map pad value (instance masks pad with 0).
    """

    def __init__(self, *, size=None, size_divisor: Optional[int] = None, pad_val: float = 0,
                 seg_pad_val: int = 255) -> None:
        if (size is None) == (size_divisor is None):
            raise ValueError(f'Pad takes exactly one of size and size_divisor, got size={size}, '
                             f'size_divisor={size_divisor}')
        self.size = None if size is None else _pair(size, 'Pad size')
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def __call__(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        if self.size is not None:
            th, tw = self.size
        else:
            d = self.size_divisor
            th, tw = -(-h // d) * d, -(-w // d) * d
        return _pad_bottom_right(results, th, tw, self.pad_val, self.seg_pad_val)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(size={self.size}, size_divisor={self.size_divisor}, '
                f'pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})')


# -------------------------------------------------------------------------------- photometric

def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``img * alpha + beta`` clipped to 0..255 and truncated to uint8 (mmseg's ``convert``)."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Scale the S channel of OpenCV's 8-bit HSV by ``factor`` (mmseg's saturation step).

    Args:
        img: (H, W, 3) uint8 RGB.
        factor: multiplier of the saturation.
    """
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = _convert(hsv[..., 1], alpha=factor)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def shift_hue(img: np.ndarray, delta: int) -> np.ndarray:
    """Add ``delta`` to the H channel of OpenCV's 8-bit HSV, modulo 180 (mmseg's hue step).

    Args:
        img: (H, W, 3) uint8 RGB.
        delta: shift in OpenCV hue units (180 = full circle).
    """
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + delta) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@TRANSFORMS.register_module()
class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion, step for step: brightness, then contrast either first
    (right after brightness) or last (chosen at random), with saturation and hue between; each of
    the four applied with probability 0.5. Brightness adds a value uniform in
    [-brightness_delta, brightness_delta], contrast multiplies every channel by a factor uniform
    in ``contrast_range``, saturation multiplies HSV's S channel by a factor uniform in
    ``saturation_range`` and hue adds an integer in [-hue_delta, hue_delta) to HSV's H (OpenCV's
    8-bit HSV, 0..180); each step clips to 0..255 and truncates to uint8, as mmseg does.

    Written with numpy and OpenCV rather than albumentations: albumentations' saturation blends
    with the grayscale image (torchvision's definition, not an HSV scaling), and its brightness,
    contrast and hue steps round where mmseg truncates and draw real-valued hue shifts.

    Args:
        brightness_delta: Largest brightness offset (0..255 scale).
        contrast_range: (min, max) contrast factor.
        saturation_range: (min, max) saturation factor.
        hue_delta: Largest hue shift in OpenCV hue units (180 = full circle).
    """

    def __init__(self, *, brightness_delta: int = 32,
                 contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5),
                 hue_delta: int = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def _brightness(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return _convert(img, beta=np.random.uniform(-self.brightness_delta,
                                                        self.brightness_delta))
        return img

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return _convert(img, alpha=np.random.uniform(*self.contrast_range))
        return img

    def _saturation(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return adjust_saturation(img, np.random.uniform(*self.saturation_range))
        return img

    def _hue(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            delta = np.random.randint(-self.hue_delta, self.hue_delta) if self.hue_delta else 0
            return shift_hue(img, delta)
        return img

    def __call__(self, results: dict) -> dict:
        img = self._brightness(results['img'])
        contrast_first = np.random.randint(2) == 1
        if contrast_first:
            img = self._contrast(img)
        img = self._hue(self._saturation(img))
        if not contrast_first:
            img = self._contrast(img)
        results['img'] = img
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(brightness_delta={self.brightness_delta}, '
                f'contrast_range={self.contrast_range}, '
                f'saturation_range={self.saturation_range}, hue_delta={self.hue_delta})')


# ----------------------------------------------------------------------------------- packing

_META_KEYS = ('img_path', 'seg_map_path', 'img_id', 'ori_shape', 'img_shape', 'pad_shape',
              'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label')


def _image_tensor(img: np.ndarray) -> torch.Tensor:
    # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class _Pack:
    """Base of the Pack* transforms: which results keys go into the sample's metainfo."""

    def __init__(self, *, meta_keys: Sequence[str] = _META_KEYS) -> None:
        self.meta_keys = tuple(meta_keys)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'


@TRANSFORMS.register_module()
class PackSegInputs(_Pack):
    """End a segmentation pipeline: ``{'inputs': (3, H, W) uint8 tensor, 'data_samples':
    DataSample}`` with ``gt_sem_seg`` = PixelData(data=(1, H, W) long) when a label map is loaded.

    Args:
        meta_keys: Results keys copied into the sample's metainfo (those present).
    """

    def __call__(self, results: dict) -> dict:
        sample = DataSample()
        if 'gt_seg_map' in results:
            seg = torch.from_numpy(results['gt_seg_map'].astype(np.int64))
            sample.gt_sem_seg = PixelData(data=seg[None])  # (H, W) -> (1, H, W)
        sample.set_metainfo({k: results[k] for k in self.meta_keys if k in results})
        return dict(inputs=_image_tensor(results['img']), data_samples=sample)


@TRANSFORMS.register_module()
class PackDetInputs(_Pack):
    """End a detection pipeline: ``{'inputs': (3, H, W) uint8 tensor, 'data_samples':
    DataSample}`` with ``gt_instances`` (bboxes float (N, 4), labels long (N,), masks bool
    (N, H, W) when loaded) and ``ignored_instances`` holding the crowd ones.

    Args:
        meta_keys: Results keys copied into the sample's metainfo (those present).
    """

    def __call__(self, results: dict) -> dict:
        sample = DataSample()
        if 'gt_bboxes' in results:
            boxes = torch.from_numpy(np.asarray(results['gt_bboxes'], np.float32).reshape(-1, 4))
            labels = torch.from_numpy(np.asarray(results['gt_bboxes_labels'], np.int64))
            ignore = torch.from_numpy(np.asarray(
                results.get('gt_ignore_flags', np.zeros(len(boxes), bool)), bool))
            masks = None
            if 'gt_masks' in results:
                masks = torch.from_numpy(np.asarray(results['gt_masks'])).bool()
            for field, sel in (('gt_instances', ~ignore), ('ignored_instances', ignore)):
                inst = InstanceData()
                inst.bboxes = boxes[sel]
                inst.labels = labels[sel]
                if masks is not None:
                    inst.masks = masks[sel]
                setattr(sample, field, inst)
        sample.set_metainfo({k: results[k] for k in self.meta_keys if k in results})
        return dict(inputs=_image_tensor(results['img']), data_samples=sample)
