"""Broken COCO annotation files: a clear error naming the file (and the annotation id), or under
``on_bad_sample='skip'`` a counted, logged skip; never a crash inside pycocotools or a mask that
silently means something else."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from densevit.datasets.coco import CocoDataset

SQUARE = [2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]  # 10x10 square, 4 points


def _coco() -> dict:
    """Two 20x30 images, categories person (1) and car (3), one good annotation each."""
    return dict(
        images=[dict(id=1, file_name='a.png', height=20, width=30),
                dict(id=2, file_name='b.png', height=20, width=30)],
        annotations=[dict(id=10, image_id=1, category_id=1, bbox=[2, 2, 10, 10], iscrowd=0,
                          area=100, segmentation=[SQUARE]),
                     dict(id=11, image_id=2, category_id=3, bbox=[2, 2, 10, 10], iscrowd=0,
                          area=100, segmentation=[SQUARE])],
        categories=[dict(id=1, name='person'), dict(id=3, name='car')])


def _build(tmp_path, data, **kwargs) -> CocoDataset:
    path = tmp_path / 'ann.json'
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    (tmp_path / 'img').mkdir(exist_ok=True)
    for name in ('a.png', 'b.png'):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / 'img' / name)
    kwargs.setdefault('metainfo', dict(classes=('person', 'car')))
    return CocoDataset(ann_file=str(path), data_root=str(tmp_path), data_prefix=dict(img='img/'),
                       test_mode=True, **kwargs)


def _with(extra: dict, **fields) -> dict:
    data = _coco()
    ann = dict(id=99, image_id=1, category_id=1, bbox=[1, 1, 5, 5], iscrowd=0, area=25,
               segmentation=[SQUARE])
    ann.update(fields)
    data['annotations'].append(ann)
    data.update(extra)
    return data


def test_not_json_is_named(tmp_path):
    with pytest.raises(ValueError, match=r'ann.json is not valid JSON'):
        _build(tmp_path, '{"images": [')


@pytest.mark.parametrize('key', ['images', 'annotations', 'categories'])
def test_missing_top_level_key_is_named(tmp_path, key):
    data = _coco()
    del data[key]
    with pytest.raises(ValueError, match=rf"ann.json lacks top-level keys \['{key}'\]"):
        _build(tmp_path, data)


# (fields of a bad annotation 99, with_mask, words of the error)
BAD = {
    'missing image id': (dict(image_id=7), False, r'points at an image id not in images \(7\)'),
    'unknown category id': (dict(category_id=42), False,
                            r'has a category id not in categories \(42\)'),
    'empty segmentation': (dict(segmentation=[]), True, 'has an empty segmentation'),
    'only polygons under 3 points': (dict(segmentation=[[1, 1, 5, 5]]), True,
                                     'has no polygon with 3 or more points'),
    'RLE of another size': (dict(segmentation=mask_utils.encode(
        np.asfortranarray(np.ones((25, 30), np.uint8))) | dict(counts='')), True,
        r"has an RLE whose size differs from its image's: RLE size \(h, w\) \(25, 30\), "
        r'image 1 \(20, 30\)'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_annotation_raises_naming_file_and_id(tmp_path, case):
    fields, with_mask, words = BAD[case]
    with pytest.raises(ValueError, match=rf'ann.json: annotation id 99 {words}'):
        _build(tmp_path, _with({}, **fields), with_mask=with_mask)


@pytest.mark.parametrize('case', list(BAD))
def test_bad_annotation_is_a_counted_logged_skip(tmp_path, case):
    fields, with_mask, _ = BAD[case]
    with pytest.warns(UserWarning, match=r'skipped 1 bad annotations \(.*; ids \[99\]\)'):
        dataset = _build(tmp_path, _with({}, **fields), with_mask=with_mask,
                         on_bad_sample='skip', max_bad_fraction=0.5)
    assert dataset.num_bad_annotations == 1
    # the two good annotations stay, one per image; annotation 99 is nowhere
    assert [len(dataset.get_data_info(i)['instances']) for i in range(2)] == [1, 1]


def test_too_many_bad_annotations_fail_under_skip(tmp_path):
    data = _with({}, image_id=7)
    data['annotations'].append(dict(data['annotations'][-1], id=100))
    with pytest.raises(ValueError, match=r'2 of 4 annotations are bad, more than '
                                         r'max_bad_fraction=0.25'):
        _build(tmp_path, data, on_bad_sample='skip', max_bad_fraction=0.25)


def test_category_outside_the_chosen_classes_is_not_bad(tmp_path):
    """A category of the file that ``metainfo`` leaves out is a choice, not an error."""
    dataset = _build(tmp_path, _coco(), metainfo=dict(classes=('person',)))
    assert dataset.num_bad_annotations == 0
    assert [len(dataset.get_data_info(i)['instances']) for i in range(2)] == [1, 0]


def test_zero_and_negative_boxes_are_dropped_with_a_counted_warning(tmp_path):
    data = _with({}, bbox=[1, 1, 0, 5])
    data['annotations'].append(dict(data['annotations'][-1], id=100, bbox=[1, 1, 5, -2]))
    with pytest.warns(UserWarning, match='dropped 2 annotations whose box has zero or negative'):
        dataset = _build(tmp_path, data)
    assert dataset.num_dropped_boxes == 2
    assert [len(dataset.get_data_info(i)['instances']) for i in range(2)] == [1, 1]


def test_polygon_part_under_3_points_is_dropped_not_read_as_a_box(tmp_path):
    """pycocotools takes a leading 4-number polygon for a box [x, y, w, h] (or fails on it deep
    inside); densevit drops such parts (counted) and keeps the instance's real polygon."""
    data = _coco()
    data['annotations'][0]['segmentation'] = [[20.0, 2.0, 8.0, 16.0], SQUARE, [1.0, 1.0]]
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_mask=True)]
    with pytest.warns(UserWarning, match='dropped 2 polygons with fewer than 3 points'):
        dataset = _build(tmp_path, data, with_mask=True, pipeline=pipeline)
    masks = dataset[0]['gt_masks']
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([SQUARE], 20, 30)))
    assert expected.sum() == 100
    np.testing.assert_array_equal(masks[0], expected)
