"""Synthetic stand-ins for COCO 2017 and ADE20K, in the real layouts and label spaces.

Images are shapes (rectangles, rotated ellipses, polygons) on textured backgrounds; later shapes
cover earlier ones, so COCO masks and boxes describe the VISIBLE part. Each class is drawn in its
palette color with mild per-image and per-pixel noise, so a tiny model learns the sets in a few CPU
minutes. Only ``num_classes_used`` classes appear, but the files keep the full label spaces (all 80
COCO categories with their real ids; ADE20K labels 1..150, 0 = unlabeled).

Everything is drawn from ``numpy.random.Generator`` streams seeded by (seed, split, index) and
written with fixed JPEG quality, so a seed gives byte-identical files.

Layouts written:

- ``make_coco(root)``: ``root/annotations/instances_{train,val}2017.json``,
  ``root/{train,val}2017/<012d id>.jpg``; use ``root`` as a config's ``data_root``.
- ``make_ade20k(root)``: ``root/ADEChallengeData2016/images/{training,validation}/*.jpg`` and
  ``root/ADEChallengeData2016/annotations/{training,validation}/*.png``; the returned
  ``root/ADEChallengeData2016`` is a config's ``data_root``.
"""
from __future__ import annotations

import json
import os
import os.path as osp

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .metainfo import ADE20K_CLASSES, ADE20K_PALETTE, COCO_CATEGORIES, COCO_PALETTE

__all__ = ['make_coco', 'make_ade20k', 'ADE20K_REGION_IDS', 'ADE20K_OBJECT_IDS',
           'COCO_USED_CAT_IDS']

JPEG_QUALITY = 95
# ADE20K labels (1-based) that may be drawn as large background regions (wall, building, sky,
# floor, tree, ceiling, road, grass, sidewalk, earth, mountain, water) and as objects (person, car,
# bed, chair, table, lamp, sofa, painting, ...); the used ones are picked from these in order,
# skipping colors too close to those already picked (see ``_pick_distinct``).
ADE20K_REGION_IDS = (1, 2, 3, 4, 5, 6, 7, 10, 12, 14, 17, 22)
ADE20K_OBJECT_IDS = (13, 21, 8, 20, 16, 37, 24, 23, 15, 19, 11, 18, 31, 25)
# COCO categories that may be drawn (real ids), picked the same way.
COCO_USED_CAT_IDS = (1, 3, 18, 6, 44, 62, 16, 5, 9, 17, 19, 28, 2, 4, 7, 8, 15, 20, 21, 47, 51,
                     63, 64, 72)
_UNLABELED_RGB = (96, 96, 96)
_SPLITS = (('train', 0), ('val', 1))


def _pick_distinct(candidates: list[int], color_of: dict[int, tuple[int, int, int]], k: int,
                   taken: list[int] = (), min_dist: float = 100.0) -> list[int]:
    """The first ``k`` of ``candidates`` (in order) whose RGB color is at least ``min_dist`` from
    every color already picked or ``taken``; the distance is relaxed until ``k`` are found."""
    while True:
        chosen, picked = list(taken), []
        for c in candidates:
            if len(picked) == k:
                break
            if all(np.linalg.norm(np.subtract(color_of[c], color_of[o])) >= min_dist
                   for o in chosen):
                chosen.append(c)
                picked.append(c)
        if len(picked) == k or min_dist < 1:
            return picked
        min_dist *= 0.8


def _rng(seed: int, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, index])


def _image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(h, w) with ``size`` on the long side and the short side in [0.6, 1.0] * size."""
    short = int(round(size * rng.uniform(0.6, 1.0)))
    return (short, size) if rng.random() < 0.7 else (size, short)


def _random_shape(rng: np.random.Generator, h: int, w: int, min_frac: float,
                  max_frac: float) -> np.ndarray:
    """A (h, w) bool mask of one rectangle, rotated ellipse or random polygon."""
    canvas = np.zeros((h, w), np.uint8)
    side = min(h, w)
    sh = max(3, int(side * rng.uniform(min_frac, max_frac)))
    sw = max(3, int(side * rng.uniform(min_frac, max_frac)))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        cv2.rectangle(canvas, (cx - sw // 2, cy - sh // 2), (cx + sw // 2, cy + sh // 2), 1, -1)
    elif kind == 1:
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(canvas, (cx, cy), (sw // 2, sh // 2), angle, 0, 360, 1, -1)
    else:
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.5, 1.0, n)
        pts = np.stack([cx + radii * np.cos(angles) * sw / 2,
                        cy + radii * np.sin(angles) * sh / 2], axis=1)  # (n, 2) x, y
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def _texture(rng: np.random.Generator, h: int, w: int, amplitude: float) -> np.ndarray:
    """A (h, w, 3) float texture: one oriented sinusoid plus per-pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    freq = rng.uniform(0.1, 0.5)
    wave = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * freq + rng.uniform(0, 2 * np.pi))
    noise = rng.normal(0.0, amplitude * 0.6, (h, w, 3)).astype(np.float32)
    return wave[..., None] * amplitude + noise


def _paint(rng: np.random.Generator, index_map: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """RGB uint8 image: each pixel's color ``colors[index_map]`` plus texture."""
    h, w = index_map.shape
    img = colors[index_map] + _texture(rng, h, w, amplitude=8.0)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _write_jpg(path: str, rgb: np.ndarray) -> None:
    ok = cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f'could not write {path}')


# ----------------------------------------------------------------------------------------- ADE20K

def _ade20k_sample(rng: np.random.Generator, size: int, region_ids: list[int],
                   object_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB image, uint8 label map with 0 = unlabeled and 1..150) pair."""
    h, w = _image_size(rng, size)
    label = np.zeros((h, w), np.uint8)
    # Background: a horizon splits two region classes; sometimes the top part splits again.
    horizon = int(h * rng.uniform(0.3, 0.7))
    top, bottom = rng.choice(region_ids, 2, replace=len(region_ids) < 2)
    label[:horizon] = top
    label[horizon:] = bottom
    if len(region_ids) > 2 and rng.random() < 0.5:
        split = int(w * rng.uniform(0.3, 0.7))
        label[:horizon, :split] = rng.choice([r for r in region_ids if r != top])
    # Objects; later ones cover earlier ones.
    pool = object_ids if object_ids else region_ids
    for _ in range(int(rng.integers(1, 5))):
        label[_random_shape(rng, h, w, 0.15, 0.5)] = rng.choice(pool)
    # Some pixels stay unlabeled.
    if rng.random() < 0.7:
        label[_random_shape(rng, h, w, 0.05, 0.2)] = 0
    colors = np.zeros((256, 3), np.float32)
    colors[0] = _UNLABELED_RGB
    palette = np.asarray(ADE20K_PALETTE, np.float32)
    colors[1:151] = palette + rng.uniform(-10, 10, palette.shape)  # mild per-image color noise
    return _paint(rng, label, colors), label


def make_ade20k(out_dir: str, *, seed: int = 0, num_train: int = 200, num_val: int = 50,
                size: int = 128, num_classes_used: int = 8) -> str:
    """Write an ADE20K-layout stand-in under ``out_dir/ADEChallengeData2016`` and return that path.

    Args:
        out_dir: Folder to write into (created if needed).
        seed: Seed of every random draw; the same seed gives byte-identical files.
        num_train: Number of training images (``images/training``).
        num_val: Number of validation images (``images/validation``).
        size: Long side of the images in pixels.
        num_classes_used: How many of the 150 classes appear (at least 2): background regions
            (wall, building, sky, floor, tree) first, then objects (person, car, bed, ...).
    """
    if not 2 <= num_classes_used <= len(ADE20K_CLASSES):
        raise ValueError(f'num_classes_used must be in 2..150, got {num_classes_used}')
    color_of = {i + 1: c for i, c in enumerate(ADE20K_PALETTE)}
    n_regions = max(2, min(5, num_classes_used - 3))
    region_ids = _pick_distinct(list(ADE20K_REGION_IDS), color_of, n_regions)
    others = list(ADE20K_OBJECT_IDS) + [i for i in range(1, len(ADE20K_CLASSES) + 1)
                                        if i not in ADE20K_OBJECT_IDS and i not in region_ids]
    object_ids = _pick_distinct(others, color_of, num_classes_used - n_regions, region_ids)
    root = osp.join(out_dir, 'ADEChallengeData2016')
    for split_name, split_idx, count in (('training', 0, num_train), ('validation', 1, num_val)):
        img_dir = osp.join(root, 'images', split_name)
        ann_dir = osp.join(root, 'annotations', split_name)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        prefix = 'ADE_train_' if split_idx == 0 else 'ADE_val_'
        for i in range(count):
            img, label = _ade20k_sample(_rng(seed, split_idx, i), size, region_ids, object_ids)
            stem = f'{prefix}{i + 1:08d}'
            _write_jpg(osp.join(img_dir, stem + '.jpg'), img)
            if not cv2.imwrite(osp.join(ann_dir, stem + '.png'), label):
                raise OSError(f'could not write {osp.join(ann_dir, stem + ".png")}')
    return root


# ------------------------------------------------------------------------------------------- COCO

def _has_hole_or_tiny(mask: np.ndarray, min_area: int) -> bool:
    if mask.sum() < min_area:
        return True
    _, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP,
                                    cv2.CHAIN_APPROX_SIMPLE)
    # hierarchy: (1, n, 4) [next, prev, first_child, parent]; a parent means a hole contour.
    return hierarchy is not None and bool((hierarchy[0, :, 3] >= 0).any())


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a bool mask as COCO polygons [x0, y0, x1, y1, ...] (3+ points each)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3:
            polys.append([float(v) for v in c.reshape(-1)])  # (k, 1, 2) -> (2k,) x, y, ...
    return polys


def _coco_sample(rng: np.random.Generator, size: int, cat_ids: list[int],
                 min_area: int = 24) -> tuple[np.ndarray, list[dict]]:
    """One RGB image and its annotations (without ids): visible masks as polygons, crowd as RLE."""
    h, w = _image_size(rng, size)
    objects: list[tuple[int, np.ndarray, bool]] = []  # (cat_id, full mask, iscrowd)
    n_objects = 0 if rng.random() < 0.03 else int(rng.integers(1, 6))
    for k in range(n_objects + 4):  # a few extra tries for placements that get rejected
        if len(objects) >= n_objects:
            break
        crowd = k == 0 and rng.random() < 0.15
        if crowd:  # a cluster of small blobs of one category, annotated as one crowd region
            shape = np.zeros((h, w), bool)
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            for _ in range(int(rng.integers(3, 7))):
                blob = np.zeros((h, w), np.uint8)
                center = (int(np.clip(cx + rng.normal(0, w / 8), 0, w - 1)),
                          int(np.clip(cy + rng.normal(0, h / 8), 0, h - 1)))
                r = int(max(2, min(h, w) * rng.uniform(0.04, 0.08)))
                cv2.circle(blob, center, r, 1, -1)
                shape |= blob.astype(bool)
        else:
            shape = _random_shape(rng, h, w, 0.15, 0.55)
        cat = int(rng.choice(cat_ids))
        trial = objects + [(cat, shape, crowd)]
        visible = _visible(trial)
        if any(_has_hole_or_tiny(v, min_area) for v, (_, _, c) in zip(visible, trial) if not c) \
                or visible[-1].sum() < min_area:
            continue
        objects = trial
    index_map = np.zeros((h, w), np.int64)  # 0 = background, k = k-th object
    for k, (_, shape, _) in enumerate(objects):
        index_map[shape] = k + 1
    bg = np.array(_background_color(rng), np.float32)
    colors = np.zeros((len(objects) + 1, 3), np.float32)
    colors[0] = bg
    for k, (cat, _, _) in enumerate(objects):
        base = np.asarray(COCO_PALETTE[_COCO_INDEX[cat]], np.float32)
        colors[k + 1] = base + rng.uniform(-10, 10, 3)
    img = _paint(rng, index_map, colors)
    anns = []
    for (cat, _, crowd), vis in zip(objects, _visible(objects)):
        if crowd:
            rle = mask_utils.encode(np.asfortranarray(vis.astype(np.uint8)))
            segmentation = {'size': [h, w], 'counts': rle['counts'].decode('ascii')}
            decoded = vis
        else:
            segmentation = _polygons(vis)
            if not segmentation:
                continue
            rles = mask_utils.frPyObjects(segmentation, h, w)
            decoded = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
        if decoded.sum() == 0:
            continue
        ys, xs = np.nonzero(decoded)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        anns.append({'category_id': cat, 'segmentation': segmentation,
                     'area': float(decoded.sum()), 'iscrowd': int(crowd),
                     'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
    return img, anns


def _background_color(rng: np.random.Generator) -> tuple[float, float, float]:
    """A low-saturation background color, far from the saturated class colors."""
    v = rng.uniform(70, 190)
    tint = rng.uniform(-12, 12, 3)
    return tuple(float(c) for c in v + tint)


def _visible(objects: list[tuple[int, np.ndarray, bool]]) -> list[np.ndarray]:
    """Visible part of each object: its shape minus every later (covering) shape."""
    covered = np.zeros_like(objects[0][1]) if objects else None
    out = []
    for _, shape, _ in reversed(objects):
        out.append(shape & ~covered)
        covered = covered | shape
    return out[::-1]


_COCO_INDEX = {cat_id: i for i, (cat_id, _, _) in enumerate(COCO_CATEGORIES)}


def make_coco(out_dir: str, *, seed: int = 0, num_train: int = 200, num_val: int = 50,
              size: int = 128, num_classes_used: int = 8) -> str:
    """Write a COCO-2017-layout stand-in into ``out_dir`` (the data root) and return it.

    Args:
        out_dir: The data root to write (``annotations/``, ``train2017/``, ``val2017/``).
        seed: Seed of every random draw; the same seed gives byte-identical files.
        num_train: Number of training images.
        num_val: Number of validation images.
        size: Long side of the images in pixels.
        num_classes_used: How many of the 80 categories appear (person, car, dog, bus, ...
            first); the JSON always lists all 80 with their real ids.
    """
    if not 1 <= num_classes_used <= len(COCO_CATEGORIES):
        raise ValueError(f'num_classes_used must be in 1..80, got {num_classes_used}')
    candidates = list(COCO_USED_CAT_IDS)
    if num_classes_used > len(candidates):
        candidates += [c for c, _, _ in COCO_CATEGORIES if c not in candidates]
    color_of = {c: COCO_PALETTE[i] for i, (c, _, _) in enumerate(COCO_CATEGORIES)}
    cat_ids = _pick_distinct(candidates, color_of, num_classes_used)
    categories = [{'id': c, 'name': n, 'supercategory': s} for c, n, s in COCO_CATEGORIES]
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    for split, split_idx in _SPLITS:
        count = num_train if split == 'train' else num_val
        img_dir = osp.join(out_dir, f'{split}2017')
        os.makedirs(img_dir, exist_ok=True)
        images, annotations = [], []
        id_base = 1 if split == 'train' else 1_000_001
        for i in range(count):
            img, anns = _coco_sample(_rng(seed, split_idx, i), size, cat_ids)
            img_id = id_base + i
            file_name = f'{img_id:012d}.jpg'
            _write_jpg(osp.join(img_dir, file_name), img)
            images.append({'id': img_id, 'file_name': file_name, 'height': int(img.shape[0]),
                           'width': int(img.shape[1])})
            for ann in anns:
                annotations.append({'id': len(annotations) + 1 + (split_idx * 10_000_000),
                                    'image_id': img_id, **ann})
        data = {'info': {'description': f'densevit synthetic COCO stand-in (seed {seed})',
                         'version': '1.0'},
                'licenses': [], 'images': images, 'annotations': annotations,
                'categories': categories}
        with open(osp.join(out_dir, 'annotations', f'instances_{split}2017.json'), 'w') as f:
            json.dump(data, f, separators=(',', ':'))
    return out_dir
