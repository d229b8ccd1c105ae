"""``on_bad_sample='raise' | 'skip'``: skip logs each bad file once, counts it, keeps batches full
by replacing the sample, and fails the run past ``max_bad_fraction``; evaluation never skips."""
import copy
import inspect
import json

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from PIL import Image
from torch.utils.data import DataLoader

from densevit.datasets import bad_samples
from densevit.datasets.ade20k import ADE20KDataset
from densevit.datasets.coco import CocoDataset

PIPELINE = [dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
            dict(type='PackSegInputs')]


def _ade(tmp_path, num: int, bad: dict) -> str:
    """``num`` 16x16 samples named s0..; ``bad`` maps an index to 'truncated' (image cut in half)
    or 'label' (label value 200). Returns the data root."""
    root = tmp_path / 'ade'
    (root / 'images' / 'training').mkdir(parents=True)
    (root / 'annotations' / 'training').mkdir(parents=True)
    for k in range(num):
        img = root / 'images' / 'training' / f's{k}.jpg'
        Image.fromarray(np.full((16, 16, 3), 10 * k, np.uint8)).save(img)
        label = np.full((16, 16), k + 1, np.uint8)
        if bad.get(k) == 'truncated':
            img.write_bytes(img.read_bytes()[:200])
        elif bad.get(k) == 'label':
            label[0, 0] = 200
        Image.fromarray(label).save(root / 'annotations' / 'training' / f's{k}.png')
    return str(root)


@pytest.fixture
def messages(monkeypatch):
    """The warnings densevit's policy logs (in this process)."""
    logged = []
    monkeypatch.setattr(bad_samples, 'print_log', lambda msg, **kw: logged.append(msg))
    return logged


def test_default_policy_is_raise(tmp_path):
    for cls in (ADE20KDataset, CocoDataset):
        assert inspect.signature(cls).parameters['on_bad_sample'].default == 'raise'
    dataset = ADE20KDataset(data_root=_ade(tmp_path, 3, {1: 'truncated'}), pipeline=PIPELINE)
    with pytest.raises(OSError, match='s1.jpg is a truncated JPEG'):
        dataset[1]


def test_unknown_policy_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"on_bad_sample must be one of \('raise', 'skip'\), "
                                         r"got 'ignore'"):
        ADE20KDataset(data_root=_ade(tmp_path, 1, {}), pipeline=PIPELINE, on_bad_sample='ignore')


def test_skip_replaces_logs_once_and_counts(tmp_path, messages):
    dataset = ADE20KDataset(data_root=_ade(tmp_path, 8, {2: 'truncated', 5: 'label'}),
                            pipeline=PIPELINE, on_bad_sample='skip', max_bad_fraction=0.3)
    np.random.seed(0)
    for _ in range(3):  # the same bad samples met again: logged and counted once
        for bad in (2, 5):
            sample = dataset[bad]
            path = sample['data_samples'].img_path
            assert not path.endswith((f's{bad}.jpg', 's2.jpg', 's5.jpg'))
            # a real, whole sample: its label is its own (k + 1 -> k after reduce_zero_label)
            k = int(path[-5])
            assert (sample['data_samples'].gt_sem_seg.data == k).all()
    assert dataset.num_bad_samples == 2
    assert len(messages) == 2
    assert 's2.jpg' in messages[0] and 'truncated JPEG' in messages[0]
    assert 's5.jpg' in messages[1] and '[200]' in messages[1] and '2 of 8 bad' in messages[1]


def test_skip_fails_past_the_bad_fraction(tmp_path, messages):
    dataset = ADE20KDataset(data_root=_ade(tmp_path, 4, {0: 'truncated', 3: 'label'}),
                            pipeline=PIPELINE, on_bad_sample='skip', max_bad_fraction=0.25)
    dataset._rand_another = lambda: 1  # the replacement mmengine draws: a good one
    assert dataset[0]['data_samples'].img_path.endswith('s1.jpg')  # 1 of 4: at the limit
    with pytest.raises(RuntimeError, match=r'2 of 4 samples are bad, more than '
                                           r'max_bad_fraction=0.25; the last one, sample 3 '
                                           r'\(.*s3.jpg\)'):
        dataset[3]


def test_evaluation_never_skips(tmp_path):
    dataset = ADE20KDataset(data_root=_ade(tmp_path, 3, {1: 'truncated'}), pipeline=PIPELINE,
                            on_bad_sample='skip', test_mode=True)
    with pytest.raises(OSError, match='s1.jpg is a truncated JPEG'):
        dataset[1]


def test_errors_that_are_bugs_are_not_skipped(tmp_path):
    def broken(results):
        raise KeyError('a bug in a transform')
    dataset = ADE20KDataset(data_root=_ade(tmp_path, 2, {}), pipeline=[broken],
                            on_bad_sample='skip', max_bad_fraction=1.0)
    with pytest.raises(KeyError, match='a bug in a transform'):
        dataset[0]
    assert dataset.num_bad_samples == 0


def test_batches_stay_full_and_workers_share_the_count(tmp_path):
    """Two loader workers, two epochs: every batch holds 4 samples, the bad file is logged once
    in all and counted once in the main process."""
    log_file = tmp_path / 'run.log'
    MMLogger.get_instance('bad_sample_policy_test', log_file=str(log_file), log_level='WARNING')
    dataset = ADE20KDataset(data_root=_ade(tmp_path, 8, {3: 'truncated'}), pipeline=PIPELINE,
                            on_bad_sample='skip', max_bad_fraction=0.2)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=pseudo_collate,
                        generator=torch.Generator().manual_seed(0), shuffle=True)
    for _ in range(2):
        sizes = [len(batch['inputs']) for batch in loader]
        assert sizes == [4, 4]
    assert dataset.num_bad_samples == 1
    assert log_file.read_text().count('skipping bad sample 3') == 1


def test_a_copy_of_the_dataset_counts_on_its_own(tmp_path, messages):
    dataset = ADE20KDataset(data_root=_ade(tmp_path, 4, {1: 'truncated'}), pipeline=PIPELINE,
                            on_bad_sample='skip', max_bad_fraction=0.5)
    dataset[1]
    clone = copy.deepcopy(dataset)
    assert dataset.num_bad_samples == 1 and clone.num_bad_samples == 0
    clone[1]
    assert clone.num_bad_samples == 1


def test_coco_skips_a_broken_image(tmp_path, messages):
    (tmp_path / 'img').mkdir()
    images = []
    for k in range(4):
        Image.fromarray(np.full((16, 16, 3), 50, np.uint8)).save(tmp_path / 'img' / f'{k}.jpg')
        images.append(dict(id=k, file_name=f'{k}.jpg', height=16, width=16))
    (tmp_path / 'img' / '2.jpg').write_bytes(b'')
    ann = dict(images=images, categories=[dict(id=1, name='person')],
               annotations=[dict(id=k, image_id=k, category_id=1, bbox=[1, 1, 4, 4], iscrowd=0)
                            for k in range(4)])
    (tmp_path / 'ann.json').write_text(json.dumps(ann))
    kwargs = dict(ann_file=str(tmp_path / 'ann.json'), data_root=str(tmp_path),
                  data_prefix=dict(img='img/'), metainfo=dict(classes=('person',)),
                  pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                            dict(type='PackDetInputs')])
    with pytest.raises(OSError, match=r'2.jpg is empty \(0 bytes\)'):
        CocoDataset(**kwargs)[2]
    dataset = CocoDataset(**kwargs, on_bad_sample='skip', max_bad_fraction=0.25)
    np.random.seed(1)
    sample = dataset[2]
    assert sample['data_samples'].img_id != 2 and len(sample['data_samples'].gt_instances) == 1
    assert dataset.num_bad_samples == 1 and '2.jpg is empty' in messages[0]
