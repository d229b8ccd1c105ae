"""Transforms keep images, label maps, instance masks and boxes aligned.

Images are painted so that their color encodes the label (segmentation) or the instance index
(detection); after every transform the color under each label / mask pixel must still say the
same thing, and each box must be the tight box of its mask (or, without masks, of its painted
rectangle). Geometry is checked against hand-computed values.
"""
import numpy as np
import pytest
import torch

from densevit.datasets.transforms import (LargeScaleJitter, LoadAnnotations, PackDetInputs,
                                          PackSegInputs, Pad, PhotoMetricDistortion,
                                          RandomCrop, RandomFlip, RandomResize, Resize)
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


def test_random_crop_pads_small_images():
    np.random.seed(0)
    results = _seg_results(np.random.default_rng(0), h=20, w=30)
    img, seg = results['img'].copy(), results['gt_seg_map'].copy()
    out = RandomCrop(crop_size=(64, 48))(results)
    assert out['img'].shape == (64, 48, 3) and out['gt_seg_map'].shape == (64, 48)
    np.testing.assert_array_equal(out['img'][:20, :30], img)
    np.testing.assert_array_equal(out['gt_seg_map'][:20, :30], seg)
    assert (out['gt_seg_map'][20:] == 255).all() and (out['gt_seg_map'][:, 30:] == 255).all()
    assert (out['img'][20:] == 0).all()
    assert out['img_shape'] == (20, 30)


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
    for seed in range(10):
        np.random.seed(seed)
        out = LargeScaleJitter(scale=(64, 64), ratio_range=(0.1, 2.0))(
            _det_results(np.random.default_rng(seed)))
        assert out['img'].shape == (64, 64, 3) and out['gt_masks'].shape[1:] == (64, 64)
        assert out['pad_shape'] == (64, 64)
        ih, iw = out['img_shape']
        assert (out['img'][ih:] == 0).all() and (out['img'][:, iw:] == 0).all()


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


def test_photometric_distortion_brightness_only_adds_a_constant():
    t = PhotoMetricDistortion(brightness_delta=32, contrast_range=(1.0, 1.0),
                              saturation_range=(1.0, 1.0), hue_delta=0)
    img = np.random.default_rng(0).integers(60, 190, (16, 16, 3)).astype(np.uint8)
    deltas = set()
    for seed in range(20):
        np.random.seed(seed)
        out = t(dict(img=img.copy()))['img']
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
