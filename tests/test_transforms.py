"""Transforms keep images, label maps, instance masks and boxes aligned.

Images are painted so that their color encodes the label (segmentation) or the instance index
(detection); after every transform the color under each label / mask pixel must still say the
same thing, and each box must be the tight box of its mask (or, without masks, of its painted
rectangle). Geometry is checked against hand-computed values; label maps against their own
values (nearest interpolation); resampling against PIL, saturation against colorsys.
"""
import colorsys

import numpy as np
import pytest
import torch

from densevit.datasets.transforms import (LargeScaleJitter, LoadAnnotations, PackDetInputs,
                                          PackSegInputs, Pad, PhotoMetricDistortion,
                                          RandomChoiceResize, RandomCrop, RandomFlip,
                                          RandomResize, RandomSizeCrop, Resize,
                                          adjust_saturation, shift_hue)
from densevit.registry import TRANSFORMS

# Distinct, saturated colors; index k paints label / instance k.
COLORS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20],
                   [20, 230, 230], [230, 20, 230], [128, 128, 128]], np.uint8)


def _seg_results(rng, h=60, w=80):
    """Label map of random blocks (labels 0..4 and some 255) and an image painted from it."""
    seg = np.zeros((h, w), np.uint8)
    for _ in range(8):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        seg[y0:y0 + rng.integers(8, 30), x0:x0 + rng.integers(8, 30)] = rng.integers(0, 5)
    seg[:4, :4] = 255
    img = COLORS[np.where(seg == 255, 6, seg)]
    return dict(img=img, gt_seg_map=seg, ori_shape=(h, w), img_shape=(h, w),
                scale_factor=(1.0, 1.0), flip=False, flip_direction=None)


def _det_results(rng, h=60, w=80, with_mask=True):
    """Overlapping rectangles and ellipses; masks are the visible parts, boxes their tight boxes,
    and the image paints instance k in COLORS[k] (background COLORS[6])."""
    import cv2
    index = np.full((h, w), -1, np.int64)
    for k in range(4):
        canvas = np.zeros((h, w), np.uint8)
        cy, cx = int(rng.integers(10, h - 10)), int(rng.integers(10, w - 10))
        if k % 2:
            cv2.ellipse(canvas, (cx, cy), (int(rng.integers(6, 20)), int(rng.integers(6, 20))),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            canvas[max(0, cy - 12):cy + 12, max(0, cx - 15):cx + 15] = 1
        index[canvas.astype(bool)] = k
    masks = np.stack([(index == k) for k in range(4)]).astype(np.uint8)
    masks = masks[masks.any(axis=(1, 2))]
    index = np.full((h, w), -1, np.int64)
    for k, m in enumerate(masks):
        index[m.astype(bool)] = k
    img = COLORS[np.where(index < 0, 6, index)]
    boxes = np.array([_tight(m) for m in masks], np.float32)
    results = dict(img=img, ori_shape=(h, w), img_shape=(h, w), scale_factor=(1.0, 1.0),
                   gt_bboxes=boxes, gt_bboxes_labels=np.arange(len(masks), dtype=np.int64),
                   gt_ignore_flags=np.zeros(len(masks), bool))
    if with_mask:
        results['gt_masks'] = masks
    return results


def _tight(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _interior(mask, radius=1):
    """Pixels of ``mask`` whose (2r+1)^2 neighbourhood is inside it (away from resampled,
    bilinearly blurred edges)."""
    m = np.pad(mask.astype(bool), radius)
    out = np.ones_like(mask, bool)
    h, w = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= m[dy:dy + h, dx:dx + w]
    return out


def _nearest_color(img):
    d = ((img[:, :, None, :].astype(int) - COLORS[None, None].astype(int)) ** 2).sum(-1)
    return d.argmin(-1)


def assert_seg_aligned(results):
    img, seg = results['img'], results['gt_seg_map']
    assert img.shape[:2] == seg.shape
    color = _nearest_color(img)
    pad = (img == 0).all(-1)
    for label in np.unique(seg):
        inner = _interior(seg == label)
        if label == 255:
            inner &= ~pad  # padded pixels are 255 in seg and black in the image
            expected = 6
        else:
            expected = label
        assert (color[inner] == expected).all(), f'label {label} misaligned with the image'
    assert (seg[pad & _interior(pad)] == 255).all()


def assert_instances_consistent(results, radius=1):
    img, masks, boxes = results['img'], results['gt_masks'], results['gt_bboxes']
    assert masks.shape == (len(boxes),) + img.shape[:2]
    assert len(results['gt_bboxes_labels']) == len(boxes) == len(results['gt_ignore_flags'])
    color = _nearest_color(img)
    for m, box, label in zip(masks, boxes, results['gt_bboxes_labels']):
        assert m.any(), 'an empty mask was kept'
        np.testing.assert_allclose(box, _tight(m), atol=1.0)
        inner = _interior(m, radius)
        # instance k was painted COLORS[k]; its label is k
        assert (color[inner] == label).all()


GEOMETRIC = {
    'LargeScaleJitter': lambda: LargeScaleJitter(scale=(64, 64), ratio_range=(0.1, 2.0)),
    'RandomResize': lambda: RandomResize(scale=(80, 60), ratio_range=(0.5, 2.0)),
    'RandomCrop': lambda: RandomCrop(crop_size=(40, 48), cat_max_ratio=0.75),
    'RandomCrop-larger-than-image': lambda: RandomCrop(crop_size=(96, 112)),
    'RandomFlip': lambda: RandomFlip(prob=0.5),
    'Pad': lambda: Pad(size_divisor=32),
}


@pytest.mark.parametrize('name', sorted(GEOMETRIC))
def test_seg_map_stays_aligned(name):
    for seed in range(6):
        np.random.seed(seed)
        results = GEOMETRIC[name]()(_seg_results(np.random.default_rng(seed)))
        assert_seg_aligned(results)
        assert results['gt_seg_map'].dtype == np.uint8


@pytest.mark.parametrize('name', sorted(GEOMETRIC))
def test_boxes_follow_masks(name):
    kept = 0
    for seed in range(6):
        np.random.seed(seed)
        results = GEOMETRIC[name]()(_det_results(np.random.default_rng(seed)))
        assert_instances_consistent(results)
        kept += len(results['gt_bboxes'])
    assert kept > 0


def _fine_label_map(h=61, w=83):
    """Labels 3, 40 and 255 in 3-pixel checks: any interpolation that mixes neighbours (bilinear,
    area, cubic) creates values between them."""
    rows, cols = np.indices((h, w)) // 3
    seg = np.where((rows + cols) % 2 == 0, 3, 40).astype(np.uint8)
    seg[(rows % 4 == 1) & (cols % 5 == 2)] = 255
    return seg


LABEL_TRANSFORMS = dict(GEOMETRIC, **{
    'Resize-keep-ratio': lambda: Resize(scale=(47, 35), keep_ratio=True),
    'Resize-up': lambda: Resize(scale=(131, 97), keep_ratio=False),
    'RandomChoiceResize': lambda: RandomChoiceResize(scales=[37, 71, 97], max_size=150),
    'RandomSizeCrop': lambda: RandomSizeCrop(min_size=20, max_size=50),
})


@pytest.mark.parametrize('name', sorted(LABEL_TRANSFORMS))
def test_label_maps_gain_no_values(name):
    """Nearest interpolation everywhere: a transformed label map holds only values of the input
    (a bilinear label map would not: see the control at the end)."""
    seg = _fine_label_map()
    img = np.full(seg.shape + (3,), 77, np.uint8)
    for seed in range(6):
        np.random.seed(seed)
        out = LABEL_TRANSFORMS[name]()(dict(img=img.copy(), gt_seg_map=seg.copy(),
                                            img_shape=seg.shape, scale_factor=(1.0, 1.0)))
        values = set(np.unique(out['gt_seg_map']).tolist())
        assert values <= {3, 40, 255}, f'{name} made label values {values - {3, 40, 255}}'
    import cv2
    bilinear = cv2.resize(seg, (47, 35), interpolation=cv2.INTER_LINEAR)
    assert set(np.unique(bilinear).tolist()) - {3, 40, 255}  # the control fails the check


def test_chain_of_transforms_keeps_everything_consistent():
    chain = [RandomFlip(prob=0.5), RandomResize(scale=(80, 60), ratio_range=(0.5, 2.0)),
             RandomCrop(crop_size=(48, 48)), LargeScaleJitter(scale=(64, 64)), Pad(size=(70, 70))]
    for seed in range(4):
        np.random.seed(seed)
        results = _det_results(np.random.default_rng(seed))
        for t in chain:
            results = t(results)
            # a downscale followed by an upscale blurs edges over about scale_factor pixels
            assert_instances_consistent(results, radius=int(np.ceil(max(results['scale_factor']))))


@pytest.mark.parametrize('name', sorted(GEOMETRIC))
def test_boxes_without_masks_follow_the_painted_rectangles(name):
    """Without masks, albumentations moves the boxes; they must match the painted objects."""
    h, w = 60, 80
    img = np.full((h, w, 3), COLORS[6], np.uint8)
    boxes = np.array([[5, 8, 30, 40], [40, 20, 75, 55]], np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        img[y0:y1, x0:x1] = COLORS[k]
    for seed in range(4):
        np.random.seed(seed)
        results = GEOMETRIC[name]()(dict(
            img=img.copy(), ori_shape=(h, w), img_shape=(h, w), scale_factor=(1.0, 1.0),
            gt_bboxes=boxes.copy(), gt_bboxes_labels=np.arange(2),
            gt_ignore_flags=np.zeros(2, bool)))
        color = _nearest_color(results['img'])
        for box, label in zip(results['gt_bboxes'], results['gt_bboxes_labels']):
            painted = color == label
            assert painted.any()
            # bilinear resampling may add a pixel of blur on each side
            np.testing.assert_allclose(box, _tight(painted), atol=1.5)


def test_random_crop_does_not_pad_small_images():
    """A side shorter than the crop is kept whole and nothing is padded (the data preprocessor
    pads after normalisation); a longer side is cropped to the crop size."""
    for seed in range(5):
        np.random.seed(seed)
        results = _seg_results(np.random.default_rng(seed), h=20, w=70)
        img, seg = results['img'].copy(), results['gt_seg_map'].copy()
        out = RandomCrop(crop_size=(64, 48), cat_max_ratio=1.0)(results)
        assert out['img'].shape == (20, 48, 3) and out['gt_seg_map'].shape == (20, 48)
        assert out['img_shape'] == out['pad_shape'] == (20, 48)
        # the window is a slice of the input at some x0 in 0..22
        starts = [x0 for x0 in range(70 - 48 + 1)
                  if np.array_equal(out['img'], img[:, x0:x0 + 48])
                  and np.array_equal(out['gt_seg_map'], seg[:, x0:x0 + 48])]
        assert starts
    np.random.seed(0)
    small = _seg_results(np.random.default_rng(0), h=20, w=30)
    img = small['img'].copy()
    out = RandomCrop(crop_size=(64, 48))(small)
    np.testing.assert_array_equal(out['img'], img)
    assert out['img_shape'] == out['pad_shape'] == (20, 30)


def _two_class_map():
    # class 0 fills the left 70 columns, class 1 the right 30: a 50-wide crop has class 0 below
    # 75 % only when it starts at x0 >= 33 (18 of the 51 possible starts).
    seg = np.zeros((50, 100), np.uint8)
    seg[:, 70:] = 1
    return seg


def _largest_share(seg):
    _, counts = np.unique(seg[seg != 255], return_counts=True)
    return counts.max() / counts.sum() if len(counts) > 1 else 1.0


def test_random_crop_honours_cat_max_ratio():
    shares = []
    for seed in range(30):
        np.random.seed(seed)
        seg = _two_class_map()
        out = RandomCrop(crop_size=(50, 50), cat_max_ratio=0.75)(
            dict(img=np.zeros((50, 100, 3), np.uint8), gt_seg_map=seg))
        shares.append(_largest_share(out['gt_seg_map']))
    assert max(shares) < 0.75
    # control: without the constraint most crops break it
    unconstrained = []
    for seed in range(30):
        np.random.seed(seed)
        out = RandomCrop(crop_size=(50, 50), cat_max_ratio=1.0)(
            dict(img=np.zeros((50, 100, 3), np.uint8), gt_seg_map=_two_class_map()))
        unconstrained.append(_largest_share(out['gt_seg_map']))
    assert sum(s >= 0.75 for s in unconstrained) > 10


def test_random_flip_geometry():
    np.random.seed(0)
    results = _det_results(np.random.default_rng(1))
    img, boxes, masks = results['img'].copy(), results['gt_bboxes'].copy(), results['gt_masks']
    w = img.shape[1]
    out = RandomFlip(prob=1.0)(results)
    np.testing.assert_array_equal(out['img'], img[:, ::-1])
    np.testing.assert_array_equal(out['gt_masks'], masks[:, :, ::-1])
    expected = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    np.testing.assert_allclose(out['gt_bboxes'], expected, atol=1e-4)
    assert out['flip'] is True and out['flip_direction'] == 'horizontal'
    out = RandomFlip(prob=0.0)(_seg_results(np.random.default_rng(0)))
    assert out['flip'] is False and out['flip_direction'] is None


def test_resize_keep_ratio_matches_hand_computed_size():
    results = _seg_results(np.random.default_rng(0), h=100, w=200)
    out = Resize(scale=(2048, 512), keep_ratio=True)(results)
    # factor = min(2048 / 200, 512 / 100) = 5.12
    assert out['img'].shape[:2] == (512, 1024) and out['img_shape'] == (512, 1024)
    assert out['scale_factor'] == pytest.approx((5.12, 5.12))
    out = Resize(scale=(50, 40), keep_ratio=False)(_seg_results(np.random.default_rng(0)))
    assert out['img'].shape[:2] == (40, 50) and out['gt_seg_map'].shape == (40, 50)
    assert out['scale_factor'] == pytest.approx((50 / 80, 40 / 60))


def test_random_resize_ratio_range():
    for seed in range(10):
        np.random.seed(seed)
        out = RandomResize(scale=(80, 60), ratio_range=(0.5, 2.0))(
            _seg_results(np.random.default_rng(0)))
        h, w = out['img'].shape[:2]
        assert 29 <= h <= 121 and abs(w / h - 80 / 60) < 0.05


def test_large_scale_jitter_output_size_and_scale():
    """At most ``scale``, never padded (the data preprocessor pads to the square)."""
    sizes = set()
    for seed in range(10):
        np.random.seed(seed)
        out = LargeScaleJitter(scale=(64, 64), ratio_range=(0.1, 2.0))(
            _det_results(np.random.default_rng(seed)))
        h, w = out['img'].shape[:2]
        assert h <= 64 and w <= 64 and out['gt_masks'].shape[1:] == (h, w)
        assert out['img_shape'] == out['pad_shape'] == (h, w)
        assert not (out['img'] == 0).all(-1).any()  # no black padding
        sizes.add((h, w))
    assert (64, 64) in sizes and any(h < 64 for h, _ in sizes)  # both crops and small images


class _Draws:
    """Stands in for ``np.random.uniform``: returns the given values in order."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self, low=0.0, high=1.0, size=None):
        value = self.values.pop(0)
        assert low <= value <= high
        return value


def _boxes_results(h=60, w=80):
    boxes = np.array([[10, 20, 50, 40], [5, 5, 15, 15], [70, 50, 78, 58]], np.float32)
    seg = np.zeros((h, w), np.uint8)
    seg[20:40, 10:50] = 7
    return dict(img=np.full((h, w, 3), 90, np.uint8), gt_seg_map=seg, ori_shape=(h, w),
                img_shape=(h, w), scale_factor=(1.0, 1.0), gt_bboxes=boxes,
                gt_bboxes_labels=np.arange(3), gt_ignore_flags=np.zeros(3, bool))


def test_large_scale_jitter_geometry_by_hand(monkeypatch):
    """detectron2's ResizeScale + FixedSizeCrop(pad=False), computed by hand on a 60x80 image at
    scale 64: ratio r resizes by min(64 r / 60, 64 r / 80); one draw u places the crop at
    round(u * (h - 64)), round(u * (w - 64))."""
    t = LargeScaleJitter(scale=(64, 64), ratio_range=(0.1, 2.0))
    # r = 0.5: factor min(0.533, 0.4) = 0.4 -> 24 x 32, no crop
    monkeypatch.setattr(np.random, 'uniform', _Draws(0.5, 0.7))
    out = t(_boxes_results())
    assert out['img'].shape[:2] == (24, 32) and out['img_shape'] == (24, 32)
    assert out['scale_factor'] == pytest.approx((0.4, 0.4))
    np.testing.assert_allclose(out['gt_bboxes'],
                               [[4, 8, 20, 16], [2, 2, 6, 6], [28, 20, 31.2, 23.2]], atol=1e-4)
    # r = 2: factor min(2.133, 1.6) = 1.6 -> 96 x 128; u = 0.25 -> y0 = 8, x0 = 16
    monkeypatch.setattr(np.random, 'uniform', _Draws(2.0, 0.25))
    out = t(_boxes_results())
    assert out['img'].shape[:2] == (64, 64) and out['img_shape'] == (64, 64)
    # [10, 20, 50, 40] * 1.6 = [16, 32, 80, 64] - (16, 8) = [0, 24, 64, 56]
    # [5, 5, 15, 15] * 1.6 = [8, 8, 24, 24] - (16, 8) = [-8, 0, 8, 16] -> clipped [0, 0, 8, 16]
    # [70, 50, 78, 58] * 1.6 - (16, 8) = [96, 72, ...]: outside the window, dropped
    np.testing.assert_allclose(out['gt_bboxes'], [[0, 24, 64, 56], [0, 0, 8, 16]], atol=1e-4)
    assert out['gt_bboxes_labels'].tolist() == [0, 1]
    seg = out['gt_seg_map']  # label 7 filled rows 32..64, cols 16..80 of the resized map
    assert (seg[24:56] == 7).all() and (seg[:24] == 0).all() and (seg[56:] == 0).all()


def test_large_scale_jitter_resizes_images_as_pil(monkeypatch):
    """The image is resized with PIL's bilinear filter (detectron2's ResizeTransform), which
    antialiases a downscale: stripes of period 3 shrunk 3x keep their mean, where OpenCV's
    bilinear samples one phase of them."""
    import cv2
    from PIL import Image
    img = np.random.default_rng(0).integers(0, 256, (60, 80, 3)).astype(np.uint8)
    monkeypatch.setattr(np.random, 'uniform', _Draws(0.5, 0.0))
    out = LargeScaleJitter(scale=(64, 64))(dict(img=img.copy(), img_shape=(60, 80)))
    expected = np.asarray(Image.fromarray(img).resize((32, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out['img'], expected)

    stripes = np.zeros((60, 60, 3), np.uint8)
    stripes[:, 2::3] = 255  # columns 0, 0, 255, ... mean 85
    monkeypatch.setattr(np.random, 'uniform', _Draws(1 / 3, 0.0))
    out = LargeScaleJitter(scale=(60, 60))(dict(img=stripes.copy(), img_shape=(60, 60)))
    assert out['img'].shape[:2] == (20, 20)
    assert abs(out['img'][2:-2, 2:-2].astype(float).mean() - 85) < 3
    assert out['img'][2:-2, 2:-2].std() < 3
    aliased = cv2.resize(stripes, (20, 20), interpolation=cv2.INTER_LINEAR)
    assert abs(aliased.astype(float).mean() - 85) > 40  # the reference the test rules out


def test_pad_size_and_divisor():
    results = _seg_results(np.random.default_rng(0), h=30, w=45)
    out = Pad(size_divisor=32)(results)
    assert out['img'].shape[:2] == (32, 64) and out['pad_shape'] == (32, 64)
    assert out['img_shape'] == (30, 45)
    assert (out['gt_seg_map'][30:] == 255).all() and (out['gt_seg_map'][:, 45:] == 255).all()
    out = Pad(size=(40, 50), pad_val=7)(_seg_results(np.random.default_rng(0), h=30, w=45))
    assert out['img'].shape[:2] == (40, 50) and (out['img'][30:] == 7).all()
    with pytest.raises(ValueError, match='exactly one of size and size_divisor'):
        Pad(size=32, size_divisor=32)


def _hsv_saturation_reference(img, factor):
    """RGB -> HSV -> S * factor (clipped to 1) -> RGB with Python's colorsys, pixel by pixel."""
    out = np.empty(img.shape, float)
    for index in np.ndindex(img.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(img[index] / 255.0))
        out[index] = np.array(colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v)) * 255
    return out


@pytest.mark.parametrize('factor', [0.5, 0.8, 1.5])
def test_saturation_scales_hsv_s_channel(factor):
    """mmseg's saturation step multiplies HSV's S; checked against colorsys (OpenCV's 8-bit HSV
    quantises hue to 2 degrees, hence a few levels of tolerance), and far from torchvision's
    definition (a blend with the grayscale image)."""
    img = np.random.default_rng(1).integers(0, 256, (10, 12, 3)).astype(np.uint8)
    img[0, :4] = [[200, 100, 50], [20, 220, 90], [128, 128, 128], [255, 0, 0]]
    out = adjust_saturation(img, factor).astype(float)
    reference = _hsv_saturation_reference(img, factor)
    assert np.abs(out - reference).max() <= 5 and np.abs(out - reference).mean() < 1
    gray = img.astype(float) @ np.array([0.299, 0.587, 0.114])
    blend = np.clip(img * factor + gray[..., None] * (1 - factor), 0, 255)
    assert np.abs(blend - reference).max() > 30  # a blend would not pass the check above

    t = PhotoMetricDistortion(brightness_delta=0, contrast_range=(1.0, 1.0),
                              saturation_range=(factor, factor), hue_delta=0)
    saturated = 0
    for seed in range(12):
        np.random.seed(seed)
        got = t(dict(img=img.copy()))['img']
        # hue_delta 0 still round-trips through HSV when the hue step is drawn
        candidates = [img, shift_hue(img, 0)]
        candidates += [adjust_saturation(img, factor), shift_hue(adjust_saturation(img, factor), 0)]
        match = [k for k, c in enumerate(candidates) if np.array_equal(got, c)]
        assert match, 'saturation must be the HSV scaling'
        saturated += min(match) >= 2
    assert 0 < saturated < 12  # applied with probability 1/2


def test_photometric_distortion_brightness_only_adds_a_constant():
    t = PhotoMetricDistortion(brightness_delta=32, contrast_range=(1.0, 1.0),
                              saturation_range=(1.0, 1.0), hue_delta=0)
    img = np.random.default_rng(0).integers(60, 190, (16, 16, 3)).astype(np.uint8)
    deltas = set()
    for seed in range(20):
        np.random.seed(seed)
        # the step itself: saturation and hue round-trip through 8-bit HSV even at factor 1 /
        # shift 0, as mmseg's do
        out = t._brightness(img.copy())
        diff = out.astype(int) - img.astype(int)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert diff.max() - diff.min() <= 1, 'brightness must shift every pixel by the same amount'
        assert abs(diff.mean()) <= 32.5
        deltas.add(int(round(diff.mean())))
    assert len(deltas) > 2  # random


def test_photometric_distortion_keeps_gray_gray_and_is_seeded():
    t = PhotoMetricDistortion()
    gray = np.full((8, 8, 3), 120, np.uint8)
    for seed in range(10):
        np.random.seed(seed)
        out = t(dict(img=gray.copy()))['img']
        assert (out.max(-1) - out.min(-1) <= 1).all()  # hue and saturation do not color gray
    img = np.random.default_rng(0).integers(0, 255, (8, 8, 3)).astype(np.uint8)
    np.random.seed(3)
    a = t(dict(img=img.copy()))['img']
    np.random.seed(3)
    b = t(dict(img=img.copy()))['img']
    np.testing.assert_array_equal(a, b)


def test_pack_seg_inputs():
    results = _seg_results(np.random.default_rng(0))
    results['img_path'] = 'x.jpg'
    out = PackSegInputs()(results)
    assert out['inputs'].dtype == torch.uint8 and out['inputs'].shape == (3, 60, 80)
    np.testing.assert_array_equal(out['inputs'].permute(1, 2, 0).numpy(), results['img'])
    seg = out['data_samples'].gt_sem_seg.data
    assert seg.dtype == torch.long and seg.shape == (1, 60, 80)
    np.testing.assert_array_equal(seg[0].numpy(), results['gt_seg_map'])
    assert out['data_samples'].img_path == 'x.jpg'
    assert out['data_samples'].ori_shape == (60, 80)


def test_pack_det_inputs_splits_crowd():
    results = _det_results(np.random.default_rng(0))
    n = len(results['gt_bboxes'])
    results['gt_ignore_flags'] = np.arange(n) == 0
    out = PackDetInputs()(results)
    gt, ign = out['data_samples'].gt_instances, out['data_samples'].ignored_instances
    assert len(gt) == n - 1 and len(ign) == 1
    assert gt.bboxes.dtype == torch.float32 and gt.labels.dtype == torch.long
    assert gt.masks.dtype == torch.bool and gt.masks.shape == (n - 1, 60, 80)
    np.testing.assert_array_equal(ign.bboxes.numpy(), results['gt_bboxes'][:1])


def test_registry_builds_by_type_and_rejects_unknown_keys():
    t = TRANSFORMS.build(dict(type='RandomCrop', crop_size=8))
    assert isinstance(t, RandomCrop) and t.crop_size == (8, 8)
    with pytest.raises(TypeError):
        TRANSFORMS.build(dict(type='RandomFlip', prob=0.5, probability=0.5))
    assert isinstance(TRANSFORMS.build(dict(type='LoadAnnotations', with_seg=True)),
                      LoadAnnotations)
