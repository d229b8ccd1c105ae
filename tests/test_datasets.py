"""COCO and ADE20K readers: compared with pycocotools on a synthetic set, and error messages."""
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from densevit.datasets.ade20k import ADE20KDataset
from densevit.datasets.coco import CocoDataset
from densevit.datasets.metainfo import ADE20K_CLASSES, COCO_CAT_IDS, COCO_CLASSES
from densevit.datasets.synthetic import make_ade20k, make_coco
from densevit.datasets.transforms import LoadAnnotations, LoadImageFromFile
from densevit.registry import DATASETS


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return make_coco(str(tmp_path_factory.mktemp('coco')), seed=3, num_train=40, num_val=6,
                     size=80)


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return make_ade20k(str(tmp_path_factory.mktemp('ade')), seed=3, num_train=6, num_val=3,
                       size=64)


def _load(info, with_mask=True):
    results = LoadImageFromFile()(dict(info))
    return LoadAnnotations(with_bbox=True, with_mask=with_mask)(results)


def test_coco_reader_matches_pycocotools(coco_root):
    ann_file = osp.join(coco_root, 'annotations/instances_train2017.json')
    ds = CocoDataset(ann_file='annotations/instances_train2017.json', data_root=coco_root,
                     with_mask=True, test_mode=True)
    ref = COCO(ann_file)
    assert ds.metainfo['classes'] == COCO_CLASSES
    assert ds.metainfo['cat_ids'] == COCO_CAT_IDS == tuple(sorted(ref.getCatIds()))
    assert len(ds) == len(ref.getImgIds())
    crowd_seen = 0
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        anns = ref.loadAnns(ref.getAnnIds(imgIds=[info['img_id']]))
        img_info = ref.loadImgs([info['img_id']])[0]
        assert info['img_path'] == osp.join(coco_root, 'train2017', img_info['file_name'])
        results = _load(info)
        assert len(results['gt_bboxes']) == len(anns)
        for k, ann in enumerate(anns):
            x, y, w, h = ann['bbox']
            np.testing.assert_allclose(results['gt_bboxes'][k], [x, y, x + w, y + h])
            assert COCO_CAT_IDS[results['gt_bboxes_labels'][k]] == ann['category_id']
            assert results['gt_ignore_flags'][k] == bool(ann['iscrowd'])
            np.testing.assert_array_equal(results['gt_masks'][k], ref.annToMask(ann))
            crowd_seen += ann['iscrowd']
    assert crowd_seen > 0, 'the synthetic set should exercise RLE crowd masks'


def test_coco_category_subset_keeps_id_mapping(coco_root):
    ann_file = osp.join(coco_root, 'annotations/instances_train2017.json')
    ds = DATASETS.build(dict(type='CocoDataset', ann_file=ann_file, data_root=coco_root,
                             metainfo=dict(classes=('dog', 'person')), test_mode=True))
    assert ds.metainfo['cat_ids'] == (18, 1)
    assert len(ds.metainfo['palette']) == 2
    ref = COCO(ann_file)
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        anns = [a for a in ref.loadAnns(ref.getAnnIds(imgIds=[info['img_id']]))
                if a['category_id'] in (18, 1)]
        assert [inst['bbox_label'] for inst in info['instances']] == \
            [0 if a['category_id'] == 18 else 1 for a in anns]
    # training drops the images without a dog or a person
    train = CocoDataset(ann_file=ann_file, data_root=coco_root,
                        metainfo=dict(classes=('dog', 'person')))
    with_any = {a['image_id'] for a in ref.dataset['annotations'] if a['category_id'] in (18, 1)}
    assert {train.get_data_info(i)['img_id'] for i in range(len(train))} == with_any


def test_coco_subset_with_unknown_class_is_an_error(coco_root):
    with pytest.raises(KeyError, match='unicorn'):
        CocoDataset(ann_file='annotations/instances_val2017.json', data_root=coco_root,
                    data_prefix=dict(img='val2017/'), metainfo=dict(classes=('unicorn',)))


def _write_json(path, images, annotations):
    cats = [{'id': 1, 'name': 'person'}, {'id': 3, 'name': 'car'}]
    with open(path, 'w') as f:
        json.dump({'images': images, 'annotations': annotations,
                   'categories': cats}, f)


def _img(i):
    return {'id': i, 'file_name': f'{i}.jpg', 'height': 10, 'width': 10}


def _ann(i, img_id, bbox, cat=1, crowd=0):
    return {'id': i, 'image_id': img_id, 'category_id': cat, 'bbox': bbox, 'iscrowd': crowd,
            'area': 1.0, 'segmentation': [[0, 0, 1, 0, 1, 1]]}


def test_empty_images_filtered_in_training_kept_in_test(tmp_path):
    ann = tmp_path / 'a.json'
    _write_json(ann, [_img(1), _img(2), _img(3)],
                [_ann(1, 1, [1, 1, 3, 3]), _ann(2, 3, [0, 0, 2, 2], cat=3)])
    train = CocoDataset(ann_file=str(ann), metainfo=dict(classes=('person', 'car')))
    test = CocoDataset(ann_file=str(ann), metainfo=dict(classes=('person', 'car')),
                       test_mode=True)
    assert [d['img_id'] for d in train] == [1, 3]
    assert [test.get_data_info(i)['img_id'] for i in range(len(test))] == [1, 2, 3]
    no_filter = CocoDataset(ann_file=str(ann), metainfo=dict(classes=('person', 'car')),
                            filter_cfg=dict(filter_empty_gt=False))
    assert len(no_filter) == 3
    with pytest.raises(ValueError, match=r'no image of .*a\.json is left after filtering'):
        CocoDataset(ann_file=str(ann), metainfo=dict(classes=('person', 'car')),
                    filter_cfg=dict(filter_empty_gt=False, min_size=11))


def test_zero_size_boxes_dropped_with_one_warning(tmp_path):
    ann = tmp_path / 'a.json'
    _write_json(ann, [_img(1), _img(2)],
                [_ann(1, 1, [1, 1, 0, 3]), _ann(2, 1, [1, 1, 3, -1]), _ann(3, 2, [1, 1, 2, 2]),
                 _ann(4, 2, [2, 2, 0, 0])])
    with pytest.warns(UserWarning) as record:
        ds = CocoDataset(ann_file=str(ann), metainfo=dict(classes=('person', 'car')),
                         test_mode=True)
    messages = [str(r.message) for r in record if 'dropped' in str(r.message)]
    assert len(messages) == 1 and 'dropped 3 annotations' in messages[0]
    assert str(ann) in messages[0]
    assert [len(ds.get_data_info(i)['instances']) for i in range(2)] == [0, 1]
    assert ds.num_dropped_boxes == 3


def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / 'broken.json'
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match='broken.json.*not valid JSON'):
        CocoDataset(ann_file=str(bad))
    missing = tmp_path / 'nokey.json'
    _write_json(missing, [_img(1)], [{'id': 1, 'image_id': 1, 'category_id': 1,
                                       'iscrowd': 0}])
    with pytest.raises(ValueError, match=r"nokey.json: annotations\[0\] lacks keys \['bbox'\]"):
        CocoDataset(ann_file=str(missing), metainfo=dict(classes=('person',)))
    nocats = tmp_path / 'nocats.json'
    nocats.write_text(json.dumps({'images': [], 'annotations': []}))
    with pytest.raises(ValueError, match=r"nocats.json lacks top-level keys \['categories'\]"):
        CocoDataset(ann_file=str(nocats))


def test_coco_pipeline_ends_in_packed_sample(coco_root):
    ds = CocoDataset(ann_file='annotations/instances_val2017.json', data_root=coco_root,
                     data_prefix=dict(img='val2017/'), with_mask=True, test_mode=True,
                     pipeline=[dict(type='LoadImageFromFile'),
                               dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                               dict(type='PackDetInputs')])
    out = ds[0]
    sample = out['data_samples']
    assert out['inputs'].shape[0] == 3 and sample.img_id == ds.get_data_info(0)['img_id']
    n = len(sample.gt_instances) + len(sample.ignored_instances)
    assert n == len(ds.get_data_info(0)['instances'])


# ----------------------------------------------------------------------------------- ADE20K

def test_ade20k_dataset_pairs_images_and_label_maps(ade_root):
    ds = ADE20KDataset(data_root=ade_root)
    assert len(ds) == 6 and ds.metainfo['classes'] == ADE20K_CLASSES
    assert len(ds.metainfo['palette']) == 150
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        stem = osp.splitext(osp.basename(info['img_path']))[0]
        assert info['seg_map_path'] == osp.join(ade_root, 'annotations/training', stem + '.png')
        assert info['reduce_zero_label'] is True
    val = ADE20KDataset(data_root=ade_root, data_prefix=dict(
        img_path='images/validation', seg_map_path='annotations/validation'))
    assert len(val) == 3


def test_ade20k_reduce_zero_label_through_pipeline(ade_root):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=False,
                                                     with_seg=True), dict(type='PackSegInputs')]
    for reduce in (True, False):
        ds = ADE20KDataset(data_root=ade_root, pipeline=pipeline, reduce_zero_label=reduce)
        for i in range(len(ds)):
            raw = cv2.imread(ds.get_data_info(i)['seg_map_path'], cv2.IMREAD_UNCHANGED)
            got = ds[i]['data_samples'].gt_sem_seg.data[0].numpy()
            expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1) if reduce else raw
            np.testing.assert_array_equal(got, expected)


def test_ade20k_test_pipeline_keeps_label_map_at_original_size(ade_root):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(128, 96)),
                dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
                dict(type='PackSegInputs')]
    ds = ADE20KDataset(data_root=ade_root, pipeline=pipeline, test_mode=True)
    out = ds[0]
    sample = out['data_samples']
    assert tuple(sample.gt_sem_seg.data.shape[1:]) == sample.ori_shape
    assert tuple(out['inputs'].shape[1:]) == sample.img_shape != sample.ori_shape


def _write_pair(folder, img_hw, seg):
    os.makedirs(folder, exist_ok=True)
    img_path, seg_path = osp.join(folder, 'a.jpg'), osp.join(folder, 'a.png')
    cv2.imwrite(img_path, np.zeros(img_hw + (3,), np.uint8))
    cv2.imwrite(seg_path, seg)
    return dict(img_path=img_path, seg_map_path=seg_path, reduce_zero_label=True)


def test_load_annotations_maps_zero_to_ignore(tmp_path):
    seg = np.array([[0, 1, 5], [150, 255, 2]], np.uint8)
    info = _write_pair(str(tmp_path), (2, 3), seg)
    out = LoadAnnotations(with_bbox=False, with_seg=True)(LoadImageFromFile()(info))
    np.testing.assert_array_equal(out['gt_seg_map'], [[255, 0, 4], [149, 255, 1]])
    info = _write_pair(str(tmp_path), (2, 3), seg)
    out = LoadAnnotations(with_bbox=False, with_seg=True, reduce_zero_label=False)(
        LoadImageFromFile()(info))
    np.testing.assert_array_equal(out['gt_seg_map'], seg)


def test_label_map_size_mismatch_names_both_files(tmp_path):
    info = _write_pair(str(tmp_path), (4, 5), np.zeros((4, 6), np.uint8))
    with pytest.raises(ValueError, match=r'a\.png has size .*\(4, 6\).*a\.jpg has \(4, 5\)'):
        LoadAnnotations(with_bbox=False, with_seg=True)(LoadImageFromFile()(info))


def test_out_of_range_labels_named_with_file(tmp_path):
    seg = np.array([[0, 151], [200, 255]], np.uint8)
    info = _write_pair(str(tmp_path), (2, 2), seg)
    with pytest.raises(ValueError, match=r'a\.png .*values \[151, 200\] outside 0\.\.150'):
        LoadAnnotations(with_bbox=False, with_seg=True)(LoadImageFromFile()(info))
    out = LoadAnnotations(with_bbox=False, with_seg=True, max_seg_label=200,
                          reduce_zero_label=False)(LoadImageFromFile()(info))
    np.testing.assert_array_equal(out['gt_seg_map'], seg)


def test_missing_or_unreadable_image_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.jpg'):
        LoadImageFromFile()(dict(img_path=str(tmp_path / 'nothere.jpg')))
    junk = tmp_path / 'junk.jpg'
    junk.write_bytes(b'not an image')
    with pytest.raises(OSError, match='junk.jpg'):
        LoadImageFromFile()(dict(img_path=str(junk)))


def test_data_root_switches_every_path(ade_root, coco_root):
    ds = ADE20KDataset(data_root=ade_root)
    assert all(ds.get_data_info(i)['img_path'].startswith(ade_root) for i in range(len(ds)))
    coco = CocoDataset(ann_file='annotations/instances_val2017.json', data_root=coco_root,
                       data_prefix=dict(img='val2017/'), test_mode=True)
    assert coco.ann_file == osp.join(coco_root, 'annotations/instances_val2017.json')
    assert coco.get_data_info(0)['img_path'].startswith(osp.join(coco_root, 'val2017'))
