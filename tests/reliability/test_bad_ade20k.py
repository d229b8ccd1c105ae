"""Broken ADE20K label maps: each a clear error naming the file (and the bad values), or under
``on_bad_sample='skip'`` a counted, logged drop."""
import numpy as np
import pytest
from PIL import Image

from densevit.datasets.ade20k import ADE20KDataset

PIPELINE = [dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=False, with_seg=True)]


def _layout(tmp_path, labels: dict) -> str:
    """images/training/<name>.jpg (24x32) and, for each name, the label array given (None: no
    label file). Returns the data root."""
    root = tmp_path / 'ade'
    (root / 'images' / 'training').mkdir(parents=True)
    (root / 'annotations' / 'training').mkdir(parents=True)
    for name, label in labels.items():
        Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(
            root / 'images' / 'training' / f'{name}.jpg')
        if label is not None:
            Image.fromarray(label).save(root / 'annotations' / 'training' / f'{name}.png')
    return str(root)


def _good() -> np.ndarray:
    label = np.zeros((24, 32), np.uint8)
    label[:, 16:] = 150
    label[0, 0] = 255
    return label


def test_good_label_map_loads_with_0_150_and_255(tmp_path):
    dataset = ADE20KDataset(data_root=_layout(tmp_path, dict(a=_good())), pipeline=PIPELINE)
    seg = dataset[0]['gt_seg_map']
    # reduce_zero_label: 0 -> 255, k -> k - 1, 255 stays ignore
    assert seg[0, 0] == 255 and seg[1, 0] == 255 and seg[0, 20] == 149


def test_label_map_of_another_size_is_named(tmp_path):
    dataset = ADE20KDataset(data_root=_layout(tmp_path, dict(a=np.zeros((24, 30), np.uint8))),
                            pipeline=PIPELINE)
    with pytest.raises(ValueError, match=r'a.png has size \(h, w\) \(24, 30\), but image '
                                         r'.*a.jpg has \(24, 32\)'):
        dataset[0]


def test_values_outside_the_label_space_are_named(tmp_path):
    label = _good()
    label[5, 5], label[6, 6], label[7, 7] = 151, 200, 254
    dataset = ADE20KDataset(data_root=_layout(tmp_path, dict(a=label)), pipeline=PIPELINE)
    with pytest.raises(ValueError, match=r'a.png .* has values \[151, 200, 254\] outside '
                                         r'0..150 and 255'):
        dataset[0]


@pytest.mark.parametrize('mode', ['RGB', 'P'])
def test_colour_label_map_is_named(tmp_path, mode):
    """An RGB or palette PNG holds colours, not class ids."""
    root = _layout(tmp_path, dict(a=None))
    label = Image.fromarray(np.stack([_good()] * 3, -1))
    (label if mode == 'RGB' else label.quantize(colors=4)).save(
        f'{root}/annotations/training/a.png')
    dataset = ADE20KDataset(data_root=root, pipeline=PIPELINE)
    with pytest.raises(ValueError, match=r'a.png must be a single-channel uint8 PNG of class ids, '
                                         r'got shape \(24, 32, 3\)'):
        dataset[0]


def test_missing_label_file_is_named_when_the_files_are_listed(tmp_path):
    root = _layout(tmp_path, dict(a=_good(), b=None, c=_good()))
    with pytest.raises(FileNotFoundError, match=r'1 of 3 label maps do not exist: '
                                                r'.*annotations/training/b.png'):
        ADE20KDataset(data_root=root, pipeline=PIPELINE)


def test_missing_label_file_is_a_counted_drop_under_skip(tmp_path):
    root = _layout(tmp_path, dict(a=_good(), b=None, c=_good()))
    dataset = ADE20KDataset(data_root=root, pipeline=PIPELINE, on_bad_sample='skip',
                            max_bad_fraction=0.5)
    assert dataset.num_missing_labels == 1
    names = [dataset.get_data_info(i)['img_path'][-5:] for i in range(len(dataset))]
    assert names == ['a.jpg', 'c.jpg']
    with pytest.raises(FileNotFoundError, match=r'1 of 3 label maps do not exist, more than '
                                                r'max_bad_fraction=0.2'):
        ADE20KDataset(data_root=root, pipeline=PIPELINE, on_bad_sample='skip',
                      max_bad_fraction=0.2)
