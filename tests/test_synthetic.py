"""Synthetic stand-in sets: deterministic, real layouts and label spaces, loadable by
pycocotools, and learnable (each class identifiable by its color)."""
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


def test_coco_masks_are_visible_parts(coco_root):
    """Later objects cover earlier ones: the non-crowd masks of an image do not overlap, and the
    image color inside each mask is close to its category's palette color."""
    from densevit.datasets.metainfo import COCO_CAT_IDS, COCO_PALETTE
    coco = COCO(osp.join(coco_root, 'annotations', 'instances_train2017.json'))
    overlaps_checked = 0
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
            if m.sum() < 50:  # JPEG chroma subsampling smears tiny fragments
                continue
            color = np.asarray(COCO_PALETTE[COCO_CAT_IDS.index(a['category_id'])], float)
            median = np.median(img[m.astype(bool)], axis=0)
            assert np.abs(median - color).max() < 30
    assert overlaps_checked > 5


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


@pytest.mark.slow
def test_generation_of_200_plus_50_each_is_fast(tmp_path):
    start = time.perf_counter()
    make_coco(str(tmp_path / 'coco'), seed=2, num_train=200, num_val=50, size=128)
    make_ade20k(str(tmp_path / 'ade20k'), seed=2, num_train=200, num_val=50, size=128)
    elapsed = time.perf_counter() - start
    assert len(os.listdir(tmp_path / 'coco' / 'train2017')) == 200
    assert len(os.listdir(tmp_path / 'ade20k' / 'ADEChallengeData2016' / 'images' /
                          'validation')) == 50
    assert elapsed < 30, f'generation took {elapsed:.1f} s'


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


def test_ade20k_classes_are_identifiable_by_color(tmp_path):
    """Learnability: labelling each pixel with the nearest palette color among the used classes
    (no learning at all) already gets most pixels right."""
    from densevit.datasets.metainfo import ADE20K_PALETTE
    root = make_ade20k(str(tmp_path), seed=0, num_train=10, num_val=0, size=64)
    folder = osp.join(root, 'images', 'training')
    correct = total = 0
    for name in sorted(os.listdir(folder)):
        img = cv2.cvtColor(cv2.imread(osp.join(folder, name)), cv2.COLOR_BGR2RGB)
        img = cv2.blur(img, (3, 3)).astype(float)
        seg = cv2.imread(osp.join(root, 'annotations', 'training', name[:-4] + '.png'),
                         cv2.IMREAD_UNCHANGED)
        used = sorted(set(np.unique(seg).tolist()) - {0})
        colors = np.array([ADE20K_PALETTE[k - 1] for k in used], float)
        dist = ((img[:, :, None] - colors[None, None]) ** 2).sum(-1)
        pred = np.array(used)[dist.argmin(-1)]
        labeled = seg > 0
        correct += (pred[labeled] == seg[labeled]).sum()
        total += labeled.sum()
    assert correct / total > 0.9
