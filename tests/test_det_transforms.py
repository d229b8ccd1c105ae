"""The DETR augmentation transforms (ClipBoxes, RandomChoiceResize, RandomSizeCrop, RandomChoice)
keep boxes and masks aligned with the image, follow DETR's size arithmetic, honour max_size, crop
and drop as hand-computed, and pick every branch; LargeScaleJitter never leaves a zero-area box.

Alignment follows tests/test_transforms.py: images are painted so that a pixel's colour names the
instance (or, for crops, its own coordinates), and each box must stay its mask's tight box.
"""
import json
import math
import os.path as osp
import warnings

import cv2
import numpy as np
import pytest

from densevit.datasets.transforms import (ClipBoxes, LargeScaleJitter, RandomChoice,
                                          RandomChoiceResize, RandomFlip, RandomSizeCrop,
                                          _short_side_size)
from densevit.registry import DATASETS, TRANSFORMS

from .test_transforms import (COLORS, _det_results, _nearest_color, _tight,
                              assert_instances_consistent)

DETR_SMALL = [  # DETR's recipe at a tenth of the size: 48..80 (max 133), 40/50/60 then crop 38..60
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=[48, 52, 56, 60, 64, 68, 72, 76, 80],
              max_size=133)],
        [dict(type='RandomChoiceResize', scales=[40, 50, 60]),
         dict(type='RandomSizeCrop', min_size=38, max_size=60),
         dict(type='RandomChoiceResize', scales=[48, 52, 56, 60, 64, 68, 72, 76, 80],
              max_size=133)],
    ]),
]

NEW_GEOMETRIC = {
    'RandomChoiceResize-up': lambda: RandomChoiceResize(scales=[90, 120, 150], max_size=200),
    'RandomChoiceResize-down': lambda: RandomChoiceResize(scales=[30, 40], max_size=60),
    'RandomSizeCrop': lambda: RandomSizeCrop(min_size=20, max_size=50),
    'RandomChoice-DETR': lambda: TRANSFORMS.build(DETR_SMALL[1]),
}


def _blur_radius(results) -> int:
    # a resampled edge blurs over about one output pixel per input pixel when upsampling
    return max(1, int(math.ceil(max(results.get('scale_factor', (1.0, 1.0))))))


# ------------------------------------------------------------------------------ sizes

@pytest.mark.parametrize('h, w, short, max_size, expected', [
    (480, 640, 800, 1333, (800, 1066)),  # long side floored: 800 * 640 / 480 = 1066.7
    (640, 480, 800, 1333, (1066, 800)),  # portrait
    (800, 1000, 800, 1333, (800, 1000)),  # already there: unchanged
    (300, 400, 600, None, (600, 800)),  # no limit
    (400, 1000, 800, 1333, (533, 1332)),  # 2.5 * 800 > 1333: short = round(1333 * 0.4) = 533
    (100, 500, 800, 1333, (267, 1333)),  # DETR gives 267 x 1335; the long side is capped
])
def test_short_side_size_follows_detr(h, w, short, max_size, expected):
    assert _short_side_size(h, w, short, max_size) == expected


def test_random_choice_resize_draws_every_scale_and_honours_max_size():
    t = RandomChoiceResize(scales=[48, 64, 80], max_size=133)
    seen = set()
    for seed in range(30):
        np.random.seed(seed)
        for h, w in ((60, 80), (80, 60), (20, 200), (200, 19), (64, 64)):
            out = t(dict(img=np.zeros((h, w, 3), np.uint8)))
            oh, ow = out['img'].shape[:2]
            assert max(oh, ow) <= 133, (h, w, oh, ow)
            assert out['img_shape'] == (oh, ow) and out['pad_shape'] == (oh, ow)
            assert out['scale_factor'] == pytest.approx((ow / w, oh / h))
            if max(h, w) / min(h, w) * 80 <= 133:  # never limited: short side is a scale
                assert min(oh, ow) in (48, 64, 80)
                seen.add(min(oh, ow))
            assert abs(ow / oh - w / h) < 0.1 * w / h
    assert seen == {48, 64, 80}
    with pytest.raises(ValueError, match='below the largest scale'):
        RandomChoiceResize(scales=[800], max_size=600)


# ------------------------------------------------------------------------------ alignment

@pytest.mark.parametrize('name', sorted(NEW_GEOMETRIC))
def test_boxes_and_masks_stay_aligned(name):
    kept = 0
    for seed in range(8):
        np.random.seed(seed)
        results = NEW_GEOMETRIC[name]()(_det_results(np.random.default_rng(seed)))
        assert_instances_consistent(results, radius=_blur_radius(results))
        assert results['img_shape'] == results['img'].shape[:2]
        kept += len(results['gt_bboxes'])
    assert kept > 0


@pytest.mark.parametrize('name', sorted(NEW_GEOMETRIC))
def test_boxes_without_masks_follow_the_painted_rectangles(name):
    h, w = 60, 80
    img = np.full((h, w, 3), COLORS[6], np.uint8)
    boxes = np.array([[5, 8, 30, 40], [40, 20, 75, 55]], np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        img[y0:y1, x0:x1] = COLORS[k]
    for seed in range(6):
        np.random.seed(seed)
        results = NEW_GEOMETRIC[name]()(dict(
            img=img.copy(), ori_shape=(h, w), img_shape=(h, w), scale_factor=(1.0, 1.0),
            gt_bboxes=boxes.copy(), gt_bboxes_labels=np.arange(2),
            gt_ignore_flags=np.zeros(2, bool)))
        color = _nearest_color(results['img'])
        for box, label in zip(results['gt_bboxes'], results['gt_bboxes_labels']):
            painted = color == label
            assert painted.any()
            np.testing.assert_allclose(box, _tight(painted), atol=1.0 + _blur_radius(results))


def test_detr_recipe_chain_keeps_everything_consistent():
    pipeline = [TRANSFORMS.build(t) for t in DETR_SMALL]
    sizes = set()
    for seed in range(10):
        np.random.seed(seed)
        results = _det_results(np.random.default_rng(seed))
        for t in pipeline:
            results = t(results)
            assert_instances_consistent(results, radius=_blur_radius(results))
        h, w = results['img'].shape[:2]
        assert min(h, w) in range(48, 81, 4) and max(h, w) <= 133
        sizes.add((h, w))
    assert len(sizes) > 3


# ------------------------------------------------------------------------------ the crop

def _coordinate_image(h, w):
    """R = x, G = y: every pixel of a crop tells where it came from."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w)[None, :]
    img[..., 1] = np.arange(h)[:, None]
    return img


def test_random_size_crop_clips_and_drops_as_hand_computed():
    # 60 x 40 image (w x h); min_size = max_size = 40: a 40 x 40 window at x0 in 0..20, y0 = 0
    boxes = np.array([[5, 5, 15, 30],     # left: survives only for x0 < 15
                      [30, 10, 50, 20],   # middle: always inside the window's reach
                      [50, 0, 60, 40],    # right edge: survives only for x0 > 10
                      [0, 35, 60, 45]],   # crosses the bottom: clipped to y 35..40
                     np.float32)
    offsets = {}
    for seed in range(60):
        np.random.seed(seed)
        out = RandomSizeCrop(min_size=40, max_size=40)(dict(
            img=_coordinate_image(40, 60), img_shape=(40, 60), gt_bboxes=boxes.copy(),
            gt_bboxes_labels=np.arange(4), gt_ignore_flags=np.zeros(4, bool)))
        assert out['img'].shape == (40, 40, 3) and out['img_shape'] == (40, 40)
        x0, y0 = int(out['img'][0, 0, 0]), int(out['img'][0, 0, 1])
        assert y0 == 0 and 0 <= x0 <= 20
        offsets[x0] = out
        expected = boxes - np.array([x0, 0, x0, 0], np.float32)
        expected[:, 0::2] = expected[:, 0::2].clip(0, 40)
        expected[:, 1::2] = expected[:, 1::2].clip(0, 40)
        keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
        np.testing.assert_allclose(out['gt_bboxes'], expected[keep], atol=1e-3)
        np.testing.assert_array_equal(out['gt_bboxes_labels'], np.flatnonzero(keep))
        assert len(out['gt_ignore_flags']) == keep.sum()
    assert set(offsets) == set(range(21))  # every window position came up
    # two cases by hand. Window x 20..60: box 0 (x 5..15 -> -15..-5) is clipped to zero width
    # and dropped, box 1 moves to x 10..30, box 2 to 30..40, box 3 to 0..40 with y cut at 40.
    np.testing.assert_allclose(offsets[20]['gt_bboxes'], [[10, 10, 30, 20], [30, 0, 40, 40],
                                                         [0, 35, 40, 40]], atol=1e-3)
    np.testing.assert_array_equal(offsets[20]['gt_bboxes_labels'], [1, 2, 3])
    # Window x 0..40: box 1 is cut at x 40, box 2 (x 50..60) is dropped.
    np.testing.assert_allclose(offsets[0]['gt_bboxes'], [[5, 5, 15, 30], [30, 10, 40, 20],
                                                        [0, 35, 40, 40]], atol=1e-3)
    np.testing.assert_array_equal(offsets[0]['gt_bboxes_labels'], [0, 1, 3])


def test_random_size_crop_sizes_and_masks():
    sizes = set()
    for seed in range(20):
        np.random.seed(seed)
        results = _det_results(np.random.default_rng(seed))
        results['img'] = _coordinate_image(60, 80)
        masks = results['gt_masks'].copy()
        out = RandomSizeCrop(min_size=20, max_size=50)(results)
        ch, cw = out['img'].shape[:2]
        assert 20 <= ch <= 50 and 20 <= cw <= 50
        sizes.add((ch, cw))
        x0, y0 = int(out['img'][0, 0, 0]), int(out['img'][0, 0, 1])
        window = masks[:, y0:y0 + ch, x0:x0 + cw]
        survivors = np.flatnonzero(window.any(axis=(1, 2)))
        np.testing.assert_array_equal(out['gt_bboxes_labels'], survivors)
        np.testing.assert_array_equal(out['gt_masks'], window[survivors])
        for box, mask in zip(out['gt_bboxes'], out['gt_masks']):
            np.testing.assert_allclose(box, _tight(mask))
    assert len(sizes) > 10
    # a side shorter than min_size is kept whole
    np.random.seed(0)
    out = RandomSizeCrop(min_size=384, max_size=600)(dict(img=np.zeros((100, 700, 3), np.uint8)))
    assert out['img'].shape[0] == 100 and 384 <= out['img'].shape[1] <= 600


# ------------------------------------------------------------------------------ the choice

def test_random_choice_picks_both_branches_and_is_seeded():
    t = TRANSFORMS.build(dict(type='RandomChoice', transforms=[
        [dict(type='Resize', scale=(10, 10), keep_ratio=False)],
        [dict(type='Resize', scale=(20, 20), keep_ratio=False),
         dict(type='Pad', size=(30, 30))]]))
    picks = []
    for seed in range(40):
        np.random.seed(seed)
        picks.append(t(dict(img=np.zeros((8, 8, 3), np.uint8)))['img'].shape[:2])
    assert set(picks) == {(10, 10), (30, 30)}
    assert 10 <= picks.count((10, 10)) <= 30  # about half each
    np.random.seed(3)
    a = t(dict(img=np.zeros((8, 8, 3), np.uint8)))['img'].shape
    np.random.seed(3)
    assert t(dict(img=np.zeros((8, 8, 3), np.uint8)))['img'].shape == a
    only_first = RandomChoice(transforms=t.transforms, probs=(1.0, 0.0))
    assert all(only_first(dict(img=np.zeros((8, 8, 3), np.uint8)))['img'].shape[:2] == (10, 10)
               for _ in range(10))
    with pytest.raises(TypeError, match='must be a list of transforms'):
        RandomChoice(transforms=[dict(type='RandomFlip')])
    with pytest.raises(ValueError, match='summing to 1'):
        RandomChoice(transforms=t.transforms, probs=(0.5, 0.6))


# ------------------------------------------------------------------------------ clipping

def test_clip_boxes_clips_drops_and_warns_once():
    masks = np.zeros((3, 40, 60), np.uint8)
    masks[0, 5:20, 50:60] = 1
    masks[1, 10:20, 10:20] = 1
    results = dict(img=np.zeros((40, 60, 3), np.uint8), img_shape=(40, 60), img_path='a.jpg',
                   gt_bboxes=np.array([[50, 5, 70, 20], [10, 10, 20, 20], [65, 0, 80, 30]],
                                      np.float32),
                   gt_bboxes_labels=np.array([3, 4, 5]), gt_ignore_flags=np.zeros(3, bool),
                   gt_masks=masks)
    t = ClipBoxes()
    with pytest.warns(UserWarning, match=r'1 box\(es\) of image a.jpg lie outside it'):
        out = t(results)
    np.testing.assert_array_equal(out['gt_bboxes'], [[50, 5, 60, 20], [10, 10, 20, 20]])
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [3, 4])
    assert out['gt_masks'].shape == (2, 40, 60) and out['gt_masks'][0].any()
    again = dict(img=np.zeros((40, 60, 3), np.uint8),
                 gt_bboxes=np.array([[-9, -9, -1, 5], [70, 0, 80, 9]], np.float32),
                 gt_bboxes_labels=np.array([0, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the second drop is only counted
        out = t(again)
    assert len(out['gt_bboxes']) == 0 and len(out['gt_bboxes_labels']) == 0
    assert t.num_dropped == 3


def test_new_transforms_survive_boxes_wholly_outside_the_image():
    """Albumentations rejects a box that clipping leaves empty; the new transforms clip first."""
    for t in (RandomChoiceResize(scales=[30]), RandomSizeCrop(min_size=10, max_size=20)):
        np.random.seed(0)
        out = t(dict(img=np.zeros((40, 60, 3), np.uint8),
                     gt_bboxes=np.array([[70, 5, 90, 20], [10, 10, 30, 30]], np.float32),
                     gt_bboxes_labels=np.array([0, 1]), gt_ignore_flags=np.zeros(2, bool)))
        assert 0 not in out['gt_bboxes_labels']


def test_large_scale_jitter_crops_never_leave_zero_area_boxes():
    """LSJ crops clip boxes to the window; a box the window cuts to nothing is dropped."""
    h, w = 60, 80
    edge_boxes = np.array([[0, 0, 3, 60], [77, 0, 80, 60], [0, 57, 80, 60], [30, 0, 31, 1],
                           [10, 10, 70, 50]], np.float32)
    kept = dropped = 0
    for seed in range(40):
        np.random.seed(seed)
        with_masks = _det_results(np.random.default_rng(seed))
        np.random.seed(seed)
        without = dict(img=np.zeros((h, w, 3), np.uint8), img_shape=(h, w),
                       gt_bboxes=edge_boxes.copy(), gt_bboxes_labels=np.arange(5),
                       gt_ignore_flags=np.zeros(5, bool))
        for results in (with_masks, without):
            n = len(results['gt_bboxes'])
            out = LargeScaleJitter(scale=(48, 48), ratio_range=(0.5, 3.0))(results)
            boxes, (ih, iw) = out['gt_bboxes'], out['img_shape']
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert (boxes >= 0).all() and (boxes[:, 0::2] <= iw).all()
            assert (boxes[:, 1::2] <= ih).all()
            kept += len(boxes)
            dropped += n - len(boxes)
    assert kept > 0 and dropped > 0  # the crops did cut some boxes away


def test_dataset_and_clip_boxes_on_a_coco_file(tmp_path):
    """The dataset drops zero-area annotations with one counted warning; ClipBoxes clips the
    boxes that leave the image and drops those wholly outside it."""
    root = str(tmp_path)
    cv2.imwrite(osp.join(root, 'a.jpg'), np.zeros((40, 60, 3), np.uint8))
    person = dict(id=1, name='person', supercategory='person')
    anns = [[5, 5, 10, 10], [50, 10, 20, 10], [70, 0, 10, 10], [5, 5, 0, 10], [5, 5, 10, -1]]
    coco = dict(images=[dict(id=1, file_name='a.jpg', height=40, width=60)],
                categories=[person],
                annotations=[dict(id=k + 1, image_id=1, category_id=1, bbox=b, iscrowd=0,
                                  area=1.0) for k, b in enumerate(anns)])
    with open(osp.join(root, 'ann.json'), 'w') as f:
        json.dump(coco, f)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                dict(type='ClipBoxes'), dict(type='RandomChoiceResize', scales=[80])]
    with pytest.warns(UserWarning) as record:
        dataset = DATASETS.build(dict(type='CocoDataset', data_root=root, ann_file='ann.json',
                                      data_prefix=dict(img=''), pipeline=pipeline,
                                      metainfo=dict(classes=('person',))))
        results = dataset[0]
    messages = [str(r.message) for r in record]
    assert sum('dropped 2 annotations' in m for m in messages) == 1
    assert sum('ClipBoxes' in m for m in messages) == 1
    # 40 x 60 -> 80 x 120 (factor 2): [5, 5, 15, 15] and [50, 10, 60 (clipped), 20]
    np.testing.assert_allclose(results['gt_bboxes'], [[10, 10, 30, 30], [100, 20, 120, 40]],
                               atol=1e-3)
