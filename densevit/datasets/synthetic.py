"""Synthetic stand-ins for COCO 2017 and ADE20K, in the real layouts and label spaces.

What tells the classes apart is what tells them apart in real data, never a colour:

- **Colour never does.** Every region and every object gets its colour from one distribution shared
  by all classes (uniform RGB, redrawn until it stands out from what lies under it), so a pixel's
  colour says nothing about its class. ``recolor_seed`` redraws every colour and leaves the
  shapes, textures and labels byte for byte as they were, which is how the tests show that a model
  does not rely on colour.
- **Things differ by shape.** Each "thing" class (COCO categories; ADE20K objects such as person,
  car, bed) owns one outline from ``SHAPE_KINDS`` (disc, triangle, square, star, cross, crescent,
  L, arrow, rhombus, capsule, bow tie, T), drawn at a random size, rotation and mild aspect ratio.
  Every object, whatever its class, is shaded alike (a smooth gradient at a random angle with a
  fine grain, ``OBJECT_TEXTURE``), so only its outline tells its class.
- **Stuff differs by texture and place.** Each ADE20K "stuff" class (wall, floor, sky, road, ...)
  owns one texture pattern (horizontal stripes, checkerboard, smooth gradient, ...; period and
  phase vary) and a place: above the horizon (wall, sky, building, tree) or below it (floor, road,
  grass, water), as in ``ADE20K_STUFF``.

Kept from real data: later shapes cover earlier ones, so COCO masks and boxes describe the VISIBLE
part (objects whose visible part has a hole or is tiny are redrawn); crowd regions (a cluster of
small shapes of one category, annotated as one RLE ``iscrowd`` region); images without objects;
unlabeled ADE20K pixels (clutter patches and one-pixel rims around some objects, label 0);
non-crowd COCO masks written as polygons. Only the first ``num_classes_used`` classes appear, but
the files keep the full label spaces (all 80 COCO categories with their real ids; ADE20K labels
1..150, 0 = unlabeled).

Everything is drawn from ``numpy.random.Generator`` streams seeded by (seed, split, index), one
for geometry and texture and one for colour, and written with fixed JPEG quality, so a seed gives
byte-identical files.

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
from typing import Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from densevit.progress import track

from .metainfo import ADE20K_CLASSES, COCO_CATEGORIES

__all__ = ['make_coco', 'make_ade20k', 'SHAPE_KINDS', 'TEXTURE_KINDS', 'ADE20K_STUFF',
           'ADE20K_THING_IDS', 'COCO_USED_CAT_IDS', 'OBJECT_TEXTURE']

JPEG_QUALITY = 95

# Outlines in a unit frame (x right, y down, radius about 1), one per thing class. Discs and
# crescents are drawn from circles (see ``_shape_mask``), the capsule from its two end circles.
_POLYGONS = {
    'triangle': [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)],
    'square': [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    'star': [(r * np.sin(a), -r * np.cos(a))
             for a, r in zip(np.arange(10) * np.pi / 5, [1.0, 0.42] * 5)],
    'cross': [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33),
              (0.33, 1), (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)],
    'ell': [(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)],
    'arrow': [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25),
              (-1, 0.25)],
    'rhombus': [(0, -1), (0.5, 0), (0, 1), (-0.5, 0)],
    'bowtie': [(-1, -0.8), (0, -0.2), (1, -0.8), (1, 0.8), (0, 0.2), (-1, 0.8)],
    'tee': [(-1, -1), (1, -1), (1, -0.45), (0.27, -0.45), (0.27, 1), (-0.27, 1), (-0.27, -0.45),
            (-1, -0.45)],
}
SHAPE_KINDS = ('disc', 'triangle', 'square', 'star', 'cross', 'crescent', 'ell', 'arrow',
               'rhombus', 'capsule', 'bowtie', 'tee')
# Patterns of stuff regions, COCO backgrounds and unlabeled clutter; objects are all 'shaded'.
TEXTURE_KINDS = ('hstripes', 'checker', 'smooth', 'speckle', 'vstripes', 'diagonal', 'blobs',
                 'dots')
OBJECT_TEXTURE = 'shaded'
# ADE20K stuff classes in the order they are used: (label, texture, place). Places alternate so
# that any two or more stuff classes include one above and one below the horizon.
ADE20K_STUFF = ((1, 'hstripes', 'top'),       # wall
                (4, 'checker', 'bottom'),     # floor
                (3, 'smooth', 'top'),         # sky
                (7, 'speckle', 'bottom'),     # road
                (2, 'vstripes', 'top'),       # building
                (10, 'diagonal', 'bottom'),   # grass
                (5, 'blobs', 'top'),          # tree
                (22, 'dots', 'bottom'))       # water
# ADE20K thing classes in the order they are used (person, car, bed, chair, table, lamp, sofa,
# painting, ...); the k-th used one is drawn as SHAPE_KINDS[k].
ADE20K_THING_IDS = (13, 21, 8, 20, 16, 37, 24, 23, 15, 19, 11, 18)
# COCO categories in the order they are used (real ids); the k-th is drawn as SHAPE_KINDS[k].
COCO_USED_CAT_IDS = (1, 3, 18, 6, 44, 62, 16, 5, 9, 17, 19, 28)
_SPLITS = (('train', 0), ('val', 1))
_COLOR_STREAM = 7919  # the extra seed word of the colour stream


# ----------------------------------------------------------------------------------- drawing

def _rng(seed: int, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, index])


def _color_rng(seed: int, split: int, index: int, recolor_seed: int | None
               ) -> np.random.Generator:
    words = [seed, split, index, _COLOR_STREAM]
    return np.random.default_rng(words if recolor_seed is None else words + [recolor_seed])


def _image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(h, w) with ``size`` on the long side and the short side in [0.6, 1.0] * size."""
    short = int(round(size * rng.uniform(0.6, 1.0)))
    return (short, size) if rng.random() < 0.7 else (size, short)


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int, center: tuple[float, float],
                radius: float) -> np.ndarray:
    """A (h, w) bool mask of one ``kind`` outline of about ``radius`` pixels around ``center``
    (x, y), at a random rotation and an aspect ratio in [0.8, 1.25]."""
    angle = rng.uniform(0, 2 * np.pi)
    aspect = np.sqrt(rng.uniform(0.8, 1.25))
    cos, sin = np.cos(angle), np.sin(angle)
    # unit frame -> image: scale x by radius * aspect and y by radius / aspect, rotate, translate
    transform = np.array([[cos, -sin], [sin, cos]]) @ np.diag([radius * aspect, radius / aspect])
    shift = np.asarray(center, np.float64)

    def to_image(points) -> np.ndarray:  # (n, 2) unit-frame x, y -> (n, 2) int32 pixels
        return np.round(np.asarray(points, np.float64) @ transform.T + shift).astype(np.int32)

    def disc(cx: float, cy: float, r: float) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return to_image(np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1))

    canvas = np.zeros((h, w), np.uint8)
    if kind == 'disc':
        cv2.fillPoly(canvas, [disc(0, 0, 1)], 1)
    elif kind == 'crescent':
        cv2.fillPoly(canvas, [disc(0, 0, 1)], 1)
        cv2.fillPoly(canvas, [disc(0.55, 0, 0.85)], 0)
    elif kind == 'capsule':  # a stadium: two end circles and the band between them
        cv2.fillPoly(canvas, [disc(-0.65, 0, 0.35), disc(0.65, 0, 0.35),
                              to_image([(-0.65, -0.35), (0.65, -0.35), (0.65, 0.35),
                                        (-0.65, 0.35)])], 1)
    else:
        cv2.fillPoly(canvas, [to_image(_POLYGONS[kind])], 1)
    return canvas.astype(bool)


def _texture(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A (h, w) float32 pattern of roughly unit amplitude; period and phase are random."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(5.0, 9.0)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 'hstripes':
        return np.sin(2 * np.pi * yy / period + phase)
    if kind == 'vstripes':
        return np.sin(2 * np.pi * xx / period + phase)
    if kind == 'diagonal':
        theta = np.pi / 4 + rng.uniform(-0.2, 0.2) + (np.pi / 2 if rng.random() < 0.5 else 0)
        return np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    if kind == 'checker':
        cell = period * 1.5
        return np.sign(np.sin(2 * np.pi * xx / cell + phase) * np.sin(2 * np.pi * yy / cell))
    if kind == 'dots':
        cell = period * 1.5
        wave = np.cos(2 * np.pi * xx / cell + phase) * np.cos(2 * np.pi * yy / cell)
        return np.where(wave > 0.5, 1.0, -0.4).astype(np.float32)
    if kind == 'speckle':
        return rng.normal(0.0, 0.9, (h, w)).astype(np.float32)
    if kind == 'blobs':
        noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 2.5)
        return noise / max(float(noise.std()), 1e-6)
    if kind == 'smooth':  # a gentle vertical gradient
        return (yy / max(h - 1, 1) - 0.5) * rng.uniform(0.5, 1.0)
    if kind == 'shaded':  # light from a random side over a fine grain
        theta = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w)
        return (ramp - ramp.mean()) * 1.5 + rng.normal(0.0, 0.15, (h, w)).astype(np.float32)
    raise ValueError(f'unknown texture {kind!r}; choose from {TEXTURE_KINDS} or '
                     f'{OBJECT_TEXTURE!r}')


def _color(crng: np.random.Generator, avoid: Sequence[np.ndarray] = (),
           min_dist: float = 80.0) -> np.ndarray:
    """An RGB colour from the one distribution every class shares, at least ``min_dist`` from
    the colours in ``avoid`` (what it is drawn over) when a few draws can find one."""
    for _ in range(20):
        color = crng.uniform(25, 230, 3)
        if all(np.linalg.norm(color - a) >= min_dist for a in avoid):
            break
    return color


class _Canvas:
    """Paints layers (mask, colour, texture) in order; later layers cover earlier ones."""

    def __init__(self, h: int, w: int) -> None:
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.colors = np.zeros((h, w, 3), np.float32)  # the flat colour under each pixel

    def paint(self, mask: np.ndarray, color: np.ndarray, pattern: np.ndarray,
              amplitude: float) -> None:
        self.rgb[mask] = color + pattern[mask, None] * amplitude
        self.colors[mask] = color

    def under(self, mask: np.ndarray) -> list[np.ndarray]:
        """The distinct colours currently under ``mask`` (at most a few)."""
        return list(np.unique(self.colors[mask].reshape(-1, 3), axis=0)[:8])

    def image(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.rgb.shape[:2]
        noisy = self.rgb + rng.normal(0.0, 3.0, (h, w, 3)).astype(np.float32)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _paint_instance(canvas: _Canvas, rng: np.random.Generator, crng: np.random.Generator,
                    mask: np.ndarray, texture: str) -> None:
    """Paint ``mask`` with a shared-distribution colour that stands out from what it covers."""
    color = _color(crng, canvas.under(mask) if mask.any() else ())
    h, w = mask.shape
    canvas.paint(mask, color, _texture(rng, texture, h, w), rng.uniform(12.0, 28.0))


def _object_center_radius(rng: np.random.Generator, h: int, w: int, lo: float, hi: float
                          ) -> tuple[tuple[float, float], float]:
    side = min(h, w)
    radius = side * rng.uniform(lo, hi)
    return (rng.uniform(0, w), rng.uniform(0, h)), radius


def _steps(count: int, desc: str, progress: bool):
    """``range(count)``, shown as it goes by densevit.progress when ``progress`` is set (and
    there is something to show)."""
    return track(range(count), desc=desc) if progress and count else range(count)


def _write_jpg(path: str, rgb: np.ndarray) -> None:
    ok = cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f'could not write {path}')


# ----------------------------------------------------------------------------------------- ADE20K

def _ade20k_classes(num_classes_used: int) -> tuple[list[tuple[int, str, str]],
                                                    list[tuple[int, str]]]:
    """(stuff classes as (label, texture, place), thing classes as (label, shape kind))."""
    n_stuff = min(len(ADE20K_STUFF), max(1, num_classes_used // 2))
    n_things = num_classes_used - n_stuff
    things = [(label, SHAPE_KINDS[k]) for k, label in enumerate(ADE20K_THING_IDS[:n_things])]
    return list(ADE20K_STUFF[:n_stuff]), things


def _ade20k_sample(rng: np.random.Generator, crng: np.random.Generator, size: int,
                   stuff: list[tuple[int, str, str]], things: list[tuple[int, str]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB image, uint8 label map with 0 = unlabeled and 1..150) pair."""
    h, w = _image_size(rng, size)
    label = np.zeros((h, w), np.uint8)
    canvas = _Canvas(h, w)
    top = [s for s in stuff if s[2] == 'top']
    bottom = [s for s in stuff if s[2] == 'bottom']
    # Stuff: a horizon splits a top class from a bottom one; the top part may split again.
    horizon = int(h * rng.uniform(0.35, 0.65)) if top and bottom else (h if top else 0)
    regions = []
    if horizon > 0:
        first = top[int(rng.integers(len(top)))]
        regions.append((first, (slice(0, horizon), slice(0, w))))
        if len(top) > 1 and rng.random() < 0.5:
            second = [s for s in top if s is not first][int(rng.integers(len(top) - 1))]
            split = int(w * rng.uniform(0.3, 0.7))
            regions.append((second, (slice(0, horizon), slice(split, w))))
    if horizon < h:
        regions.append((bottom[int(rng.integers(len(bottom)))], (slice(horizon, h), slice(0, w))))
    for (cls, texture, _), window in regions:
        mask = np.zeros((h, w), bool)
        mask[window] = True
        label[mask] = cls
        _paint_instance(canvas, rng, crng, mask, texture)
    # Things: later ones cover earlier ones; all shaded alike.
    objects = []
    for _ in range(int(rng.integers(1, 5)) if things else 0):
        cls, kind = things[int(rng.integers(len(things)))]
        center, radius = _object_center_radius(rng, h, w, 0.1, 0.28)
        mask = _shape_mask(rng, kind, h, w, center, radius)
        label[mask] = cls
        _paint_instance(canvas, rng, crng, mask, OBJECT_TEXTURE)
        objects.append(mask)
    # Unlabeled pixels: a clutter patch, and a one-pixel rim around some objects.
    if rng.random() < 0.5:
        center, radius = _object_center_radius(rng, h, w, 0.05, 0.12)
        mask = _shape_mask(rng, 'disc', h, w, center, radius)
        label[mask] = 0
        _paint_instance(canvas, rng, crng, mask, TEXTURE_KINDS[int(rng.integers(8))])
    for mask in objects:
        if rng.random() < 0.3:
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            label[grown & ~mask] = 0
    return canvas.image(rng), label


def make_ade20k(out_dir: str, *, seed: int = 0, num_train: int = 200, num_val: int = 50,
                size: int = 128, num_classes_used: int = 8,
                recolor_seed: int | None = None, progress: bool = False) -> str:
    """Write an ADE20K-layout stand-in under ``out_dir/ADEChallengeData2016`` and return that path.

    Args:
        out_dir: Folder to write into (created if needed).
        seed: Seed of every random draw; the same seed gives byte-identical files.
        num_train: Number of training images (``images/training``).
        num_val: Number of validation images (``images/validation``).
        size: Long side of the images in pixels.
        num_classes_used: How many of the 150 classes appear: half of them (at most 8) stuff
            classes from ``ADE20K_STUFF``, the rest thing classes from ``ADE20K_THING_IDS`` (at
            most 12), so 2..20.
        recolor_seed: Redraw every colour from this seed; shapes, textures and labels stay
            exactly those of ``seed``.
        progress: Show the progress of each split on standard error (densevit.progress).
    """
    max_used = len(ADE20K_STUFF) + len(SHAPE_KINDS)
    if not 2 <= num_classes_used <= max_used:
        raise ValueError(f'num_classes_used must be in 2..{max_used} (one shape or texture per '
                         f'class), got {num_classes_used}')
    stuff, things = _ade20k_classes(num_classes_used)
    root = osp.join(out_dir, 'ADEChallengeData2016')
    for split_name, split_idx, count in (('training', 0, num_train), ('validation', 1, num_val)):
        img_dir = osp.join(root, 'images', split_name)
        ann_dir = osp.join(root, 'annotations', split_name)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        prefix = 'ADE_train_' if split_idx == 0 else 'ADE_val_'
        for i in _steps(count, f'ADE20K {split_name}', progress):
            img, label = _ade20k_sample(_rng(seed, split_idx, i),
                                        _color_rng(seed, split_idx, i, recolor_seed), size,
                                        stuff, things)
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


def _visible(objects: list[tuple[int, np.ndarray, bool]]) -> list[np.ndarray]:
    """Visible part of each object: its shape minus every later (covering) shape."""
    covered = np.zeros_like(objects[0][1]) if objects else None
    out = []
    for _, shape, _ in reversed(objects):
        out.append(shape & ~covered)
        covered = covered | shape
    return out[::-1]


def _crowd_mask(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A cluster of 3..6 small ``kind`` shapes: one crowd region."""
    mask = np.zeros((h, w), bool)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    for _ in range(int(rng.integers(3, 7))):
        center = (float(np.clip(cx + rng.normal(0, w / 8), 0, w - 1)),
                  float(np.clip(cy + rng.normal(0, h / 8), 0, h - 1)))
        mask |= _shape_mask(rng, kind, h, w, center, max(2.0, min(h, w) * rng.uniform(0.05, 0.09)))
    return mask


def _coco_sample(rng: np.random.Generator, crng: np.random.Generator, size: int,
                 cat_kinds: list[tuple[int, str]], min_area: int = 24
                 ) -> tuple[np.ndarray, list[dict]]:
    """One RGB image and its annotations (without ids): visible masks as polygons, crowd as RLE."""
    h, w = _image_size(rng, size)
    objects: list[tuple[int, np.ndarray, bool]] = []  # (cat_id, full mask, iscrowd)
    n_objects = 0 if rng.random() < 0.03 else int(rng.integers(1, 6))
    for k in range(n_objects + 4):  # a few extra tries for placements that get rejected
        if len(objects) >= n_objects:
            break
        cat, kind = cat_kinds[int(rng.integers(len(cat_kinds)))]
        crowd = k == 0 and rng.random() < 0.15
        if crowd:
            shape = _crowd_mask(rng, kind, h, w)
        else:
            center, radius = _object_center_radius(rng, h, w, 0.1, 0.28)
            shape = _shape_mask(rng, kind, h, w, center, radius)
        trial = objects + [(cat, shape, crowd)]
        visible = _visible(trial)
        if any(_has_hole_or_tiny(v, min_area) for v, (_, _, c) in zip(visible, trial) if not c) \
                or visible[-1].sum() < min_area:
            continue
        objects = trial
    # Background (not a class): one shared-distribution colour and texture, then the objects.
    canvas = _Canvas(h, w)
    _paint_instance(canvas, rng, crng, np.ones((h, w), bool),
                    TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))])
    for _, shape, _ in objects:
        _paint_instance(canvas, rng, crng, shape, OBJECT_TEXTURE)
    img = canvas.image(rng)
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


def make_coco(out_dir: str, *, seed: int = 0, num_train: int = 200, num_val: int = 50,
              size: int = 128, num_classes_used: int = 8,
              recolor_seed: int | None = None, progress: bool = False) -> str:
    """Write a COCO-2017-layout stand-in into ``out_dir`` (the data root) and return it.

    Args:
        out_dir: The data root to write (``annotations/``, ``train2017/``, ``val2017/``).
        seed: Seed of every random draw; the same seed gives byte-identical files.
        num_train: Number of training images.
        num_val: Number of validation images.
        size: Long side of the images in pixels.
        num_classes_used: How many of the 80 categories appear (person, car, dog, bus, ... in the
            order of ``COCO_USED_CAT_IDS``, one shape each, so at most 12); the JSON always lists
            all 80 with their real ids.
        recolor_seed: Redraw every colour from this seed; shapes, textures and annotations stay
            exactly those of ``seed``.
        progress: Show the progress of each split on standard error (densevit.progress).
    """
    if not 1 <= num_classes_used <= len(COCO_USED_CAT_IDS):
        raise ValueError(f'num_classes_used must be in 1..{len(COCO_USED_CAT_IDS)} (one shape '
                         f'per category), got {num_classes_used}')
    cat_kinds = [(cat, SHAPE_KINDS[k]) for k, cat in
                 enumerate(COCO_USED_CAT_IDS[:num_classes_used])]
    categories = [{'id': c, 'name': n, 'supercategory': s} for c, n, s in COCO_CATEGORIES]
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    for split, split_idx in _SPLITS:
        count = num_train if split == 'train' else num_val
        img_dir = osp.join(out_dir, f'{split}2017')
        os.makedirs(img_dir, exist_ok=True)
        images, annotations = [], []
        id_base = 1 if split == 'train' else 1_000_001
        for i in _steps(count, f'COCO {split}2017', progress):
            img, anns = _coco_sample(_rng(seed, split_idx, i),
                                     _color_rng(seed, split_idx, i, recolor_seed), size,
                                     cat_kinds)
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
