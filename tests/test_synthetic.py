"""Synthetic stand-in sets: deterministic, real layouts and label spaces, loadable by
pycocotools, and asking for shape and context: colour never tells a class."""
import hashlib
import json
import os
import os.path as osp
import runpy
import time

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from densevit.datasets.metainfo import COCO_CATEGORIES
from densevit.datasets.synthetic import make_ade20k, make_coco

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _digests(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _make_both(out, seed):
    make_coco(osp.join(out, 'coco'), seed=seed, num_train=5, num_val=2, size=64)
    make_ade20k(osp.join(out, 'ade20k'), seed=seed, num_train=5, num_val=2, size=64)
    return _digests(out)


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    a = _make_both(str(tmp_path / 'a'), seed=0)
    b = _make_both(str(tmp_path / 'b'), seed=0)
    c = _make_both(str(tmp_path / 'c'), seed=1)
    assert a == b
    assert set(a) == set(c)
    differing = [k for k in a if a[k] != c[k]]
    assert len(differing) > len(a) // 2


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return make_coco(str(tmp_path_factory.mktemp('coco')), seed=0, num_train=40, num_val=8,
                     size=96)


def test_coco_layout_and_label_space(coco_root):
    for split, count in (('train', 40), ('val', 8)):
        ann_file = osp.join(coco_root, 'annotations', f'instances_{split}2017.json')
        with open(ann_file) as f:
            data = json.load(f)
        assert [(c['id'], c['name'], c['supercategory']) for c in data['categories']] == \
            list(COCO_CATEGORIES)
        assert len(data['images']) == count
        for img in data['images']:
            path = osp.join(coco_root, f'{split}2017', img['file_name'])
            assert img['file_name'] == f'{img["id"]:012d}.jpg'
            arr = cv2.imread(path)
            assert arr.shape[:2] == (img['height'], img['width'])
            assert max(arr.shape[:2]) == 96
        coco = COCO(ann_file)  # pycocotools loads it
        used = {a['category_id'] for a in data['annotations']}
        assert 2 <= len(used) <= 8
        assert len({a['id'] for a in data['annotations']}) == len(data['annotations'])
        for ann in data['annotations']:
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            # the box is the tight box of the (visible) mask, the area its pixel count
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert ann['area'] == mask.sum()
            if ann['iscrowd']:
                assert isinstance(ann['segmentation']['counts'], str)
                assert ann['segmentation']['size'] == [h_ for h_ in (
                    coco.imgs[ann['image_id']]['height'], coco.imgs[ann['image_id']]['width'])]
            else:
                assert isinstance(ann['segmentation'], list)
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation'])


def test_coco_masks_are_visible_parts_and_colour_is_not_the_category(coco_root):
    """Later objects cover earlier ones: the non-crowd masks of an image do not overlap. The
    colour inside a mask varies across instances of one category as much as across categories."""
    coco = COCO(osp.join(coco_root, 'annotations', 'instances_train2017.json'))
    overlaps_checked = 0
    medians: dict[int, list] = {}
    for img_id in coco.getImgIds():
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])) if not a['iscrowd']]
        if not anns:
            continue
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(int)
        assert masks.sum(0).max() <= 1
        overlaps_checked += len(anns) > 1
        img = cv2.cvtColor(cv2.imread(osp.join(coco_root, 'train2017',
                                               coco.imgs[img_id]['file_name'])),
                           cv2.COLOR_BGR2RGB).astype(float)
        for a, m in zip(anns, masks):
            if m.sum() >= 50:
                medians.setdefault(a['category_id'], []).append(
                    np.median(img[m.astype(bool)], axis=0))
    assert overlaps_checked > 5
    spread = [np.std(v, axis=0).mean() for v in medians.values() if len(v) >= 5]
    assert len(spread) >= 4 and min(spread) > 35, spread  # uniform on [25, 230]: std ~59


def test_coco_categories_are_told_apart_by_shape(tmp_path):
    """A nearest-neighbour classifier on rotation- and scale-invariant shape moments of the
    (visible, possibly occluded) masks finds the category far above chance."""
    root = make_coco(str(tmp_path), seed=0, num_train=60, num_val=30, size=96)

    def moments(split):
        coco = COCO(osp.join(root, 'annotations', f'instances_{split}2017.json'))
        feats, cats = [], []
        for a in coco.loadAnns(coco.getAnnIds()):
            if not a['iscrowd']:
                hu = cv2.HuMoments(cv2.moments(coco.annToMask(a), binaryImage=True)).ravel()[:4]
                feats.append(-np.sign(hu) * np.log10(np.abs(hu) + 1e-30))
                cats.append(a['category_id'])
        return np.array(feats), np.array(cats)

    train_x, train_y = moments('train')
    val_x, val_y = moments('val')
    pred = train_y[((val_x[:, None] - train_x[None]) ** 2).sum(-1).argmin(1)]
    accuracy = (pred == val_y).mean()
    chance = np.bincount(train_y).max() / len(train_y)
    assert accuracy > 0.4 and accuracy > 2.5 * chance, (accuracy, chance)


def test_recolor_seed_changes_colours_only(tmp_path):
    """recolor_seed redraws every colour: same labels and annotations, different pixels."""
    a = make_ade20k(str(tmp_path / 'a'), seed=0, num_train=4, num_val=2, size=64)
    b = make_ade20k(str(tmp_path / 'b'), seed=0, num_train=4, num_val=2, size=64, recolor_seed=1)
    for split in ('training', 'validation'):
        for name in os.listdir(osp.join(a, 'annotations', split)):
            seg_a, seg_b = (cv2.imread(osp.join(r, 'annotations', split, name),
                                       cv2.IMREAD_UNCHANGED) for r in (a, b))
            assert np.array_equal(seg_a, seg_b)
            img_a, img_b = (cv2.imread(osp.join(r, 'images', split, name[:-4] + '.jpg'))
                            .astype(float) for r in (a, b))
            assert np.abs(img_a - img_b).mean() > 30
    ca = make_coco(str(tmp_path / 'ca'), seed=0, num_train=6, num_val=0, size=64)
    cb = make_coco(str(tmp_path / 'cb'), seed=0, num_train=6, num_val=0, size=64, recolor_seed=1)
    with open(osp.join(ca, 'annotations', 'instances_train2017.json')) as f:
        anns_a = json.load(f)['annotations']
    with open(osp.join(cb, 'annotations', 'instances_train2017.json')) as f:
        assert json.load(f)['annotations'] == anns_a


def test_some_images_have_no_annotations_and_some_have_crowds(tmp_path):
    root = make_coco(str(tmp_path), seed=0, num_train=200, num_val=0, size=48)
    with open(osp.join(root, 'annotations', 'instances_train2017.json')) as f:
        data = json.load(f)
    with_anns = {a['image_id'] for a in data['annotations']}
    assert 0 < len(data['images']) - len(with_anns) < 20
    assert sum(a['iscrowd'] for a in data['annotations']) > 5


def test_ade20k_layout_and_labels(tmp_path):
    root = make_ade20k(str(tmp_path), seed=0, num_train=30, num_val=5, size=80)
    assert root == osp.join(str(tmp_path), 'ADEChallengeData2016')
    labels = set()
    unlabeled = 0
    for split, prefix, count in (('training', 'ADE_train_', 30), ('validation', 'ADE_val_', 5)):
        names = sorted(os.listdir(osp.join(root, 'images', split)))
        assert names == [f'{prefix}{i:08d}.jpg' for i in range(1, count + 1)]
        for name in names:
            img = cv2.imread(osp.join(root, 'images', split, name))
            seg = cv2.imread(osp.join(root, 'annotations', split, name[:-4] + '.png'),
                             cv2.IMREAD_UNCHANGED)
            assert seg.dtype == np.uint8 and seg.ndim == 2 and seg.shape == img.shape[:2]
            assert max(seg.shape) == 80
            labels |= set(np.unique(seg).tolist())
            unlabeled += int((seg == 0).any())
    assert 0 in labels and unlabeled > 3
    assert labels - {0} <= set(range(1, 151)) and len(labels - {0}) == 8


def test_tool_writes_the_layout(tmp_path):
    main = runpy.run_path(osp.join(REPO, 'tools', 'make_synthetic.py'))['main']
    main([str(tmp_path / 'all'), '--seed', '2', '--num-train', '3', '--num-val', '2',
          '--size', '40'])
    assert sorted(os.listdir(tmp_path / 'all' / 'coco' / 'train2017')) == \
        [f'{i:012d}.jpg' for i in (1, 2, 3)]
    assert sorted(os.listdir(tmp_path / 'all' / 'coco' / 'annotations')) == \
        ['instances_train2017.json', 'instances_val2017.json']
    ade = tmp_path / 'all' / 'ade20k' / 'ADEChallengeData2016'
    assert len(os.listdir(ade / 'images' / 'training')) == 3
    assert len(os.listdir(ade / 'annotations' / 'validation')) == 2
    assert max(cv2.imread(str(ade / 'images' / 'training' / 'ADE_train_00000001.jpg')).shape) == 40
    main([str(tmp_path / 'only'), '--only', 'ade20k', '--num-train', '2', '--num-val', '1'])
    assert os.listdir(tmp_path / 'only') == ['ade20k']


def test_ade20k_colour_does_not_tell_the_class(tmp_path):
    """Labelling each pixel with the class of the nearest mean training colour (a colour lookup)
    scores near chance on the val split, and stuff classes keep to their side of the horizon."""
    from densevit.datasets.synthetic import ADE20K_STUFF
    root = make_ade20k(str(tmp_path), seed=0, num_train=40, num_val=20, size=64)

    def load(split):
        folder = osp.join(root, 'images', split)
        for name in sorted(os.listdir(folder)):
            img = cv2.cvtColor(cv2.imread(osp.join(folder, name)), cv2.COLOR_BGR2RGB)
            seg = cv2.imread(osp.join(root, 'annotations', split, name[:-4] + '.png'),
                             cv2.IMREAD_UNCHANGED)
            yield cv2.blur(img, (3, 3)).astype(float), seg

    train = list(load('training'))
    classes = sorted(set(np.concatenate([np.unique(s) for _, s in train]).tolist()) - {0})
    means = np.stack([np.concatenate([img[seg == c] for img, seg in train]).mean(0)
                      for c in classes])
    inter, union = np.zeros(len(classes)), np.zeros(len(classes))
    for img, seg in load('validation'):
        pred = np.array(classes)[((img[:, :, None] - means) ** 2).sum(-1).argmin(-1)]
        for i, c in enumerate(classes):
            inter[i] += ((pred == c) & (seg == c)).sum()
            union[i] += (((pred == c) & (seg > 0)) | (seg == c)).sum()
    miou = (inter / np.maximum(union, 1)).mean()
    assert miou < 0.15, miou
    top = {label for label, _, place in ADE20K_STUFF if place == 'top'}
    bottom = {label for label, _, place in ADE20K_STUFF if place == 'bottom'}
    for _, seg in train:
        assert not top & set(np.unique(seg[-1]).tolist())  # the bottom row: no sky, no wall
        assert not bottom & set(np.unique(seg[0]).tolist())
