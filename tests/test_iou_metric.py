"""IoUMetric against hand-computed values and an independent confusion-matrix computation."""
import math

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator

from densevit.evaluation.iou_metric import IoUMetric
from densevit.registry import METRICS
from densevit.structures import DataSample, PixelData


def _sample(pred, gt) -> dict:
    pred = torch.as_tensor(pred, dtype=torch.long)[None]  # (H, W) -> (1, H, W)
    gt = torch.as_tensor(gt, dtype=torch.long)[None]  # (H, W) -> (1, H, W)
    return {'pred_sem_seg': {'data': pred}, 'gt_sem_seg': {'data': gt}}


def _metric(classes, **cfg) -> IoUMetric:
    metric = IoUMetric(**cfg)
    metric.dataset_meta = {'classes': list(classes)}
    return metric


def _run(metric, samples):
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


def test_perfect_prediction_is_100():
    gt = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    gt[0, 0, :3] = 255
    res = _run(_metric('abcd'), [_sample(g, g) for g in gt])
    assert res == {'aAcc': 100.0, 'mIoU': 100.0, 'mAcc': 100.0}


def test_hand_computed_three_classes():
    gt = [[0, 0, 1],
          [1, 1, 2],
          [2, 255, 2]]
    pred = [[0, 1, 1],
            [1, 2, 2],
            [0, 0, 2]]  # the 0 under the 255 must not count
    # 8 labelled pixels; (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (2,0) (2,2)
    # class 0: label 2, pred 2 (pixels (0,0), (2,0)), intersect 1, union 2+2-1=3
    #          IoU 1/3, Acc 1/2, Dice 2*1/(2+2) = 1/2
    # class 1: label 3, pred 3, intersect 2, union 4 -> IoU 1/2, Acc 2/3, Dice 4/6
    # class 2: label 3, pred 3, intersect 2, union 4 -> IoU 1/2, Acc 2/3, Dice 4/6
    # mIoU = (1/3 + 1/2 + 1/2) / 3 = 4/9 = 44.44 %
    # mAcc = (1/2 + 2/3 + 2/3) / 3 = 11/18 = 61.11 %
    # mDice = (1/2 + 2/3 + 2/3) / 3 = 11/18 = 61.11 %
    # aAcc = 5 correct / 8 labelled = 62.50 %
    metric = _metric(['a', 'b', 'c'], iou_metrics=('mIoU', 'mDice'))
    res = _run(metric, [_sample(pred, gt)])
    assert res == {'aAcc': 62.5, 'mIoU': 44.44, 'mAcc': 61.11, 'mDice': 61.11}
    assert metric.last_per_class['a'] == {'IoU': 33.33, 'Acc': 50.0, 'Dice': 50.0}
    assert metric.last_per_class['b'] == {'IoU': 50.0, 'Acc': 66.67, 'Dice': 66.67}


def test_absent_class_is_nan_and_left_out_unless_nan_to_num():
    gt = [[0, 0], [1, 1]]
    pred = [[0, 2], [1, 1]]
    # class 0: label 2, pred 1, inter 1, union 2 -> IoU 1/2, Acc 1/2
    # class 1: label 2, pred 2, inter 2 -> IoU 1, Acc 1
    # class 2: label 0, pred 1 -> IoU 0/1 = 0 (counted), Acc 0/0 = NaN (left out)
    # class 3: absent from both -> IoU NaN, Acc NaN (left out)
    # mIoU = (1/2 + 1 + 0) / 3 = 50 %; mAcc = (1/2 + 1) / 2 = 75 %; aAcc = 3/4
    metric = _metric('abcd')
    res = _run(metric, [_sample(pred, gt)])
    assert res == {'aAcc': 75.0, 'mIoU': 50.0, 'mAcc': 75.0}
    assert metric.last_per_class['c']['IoU'] == 0.0
    assert math.isnan(metric.last_per_class['c']['Acc'])
    assert math.isnan(metric.last_per_class['d']['IoU'])
    # nan_to_num=0 puts them back into the means: mIoU = 1.5 / 4, mAcc = 1.5 / 4
    res0 = _run(_metric('abcd', nan_to_num=0), [_sample(pred, gt)])
    assert res0 == {'aAcc': 75.0, 'mIoU': 37.5, 'mAcc': 37.5}


def test_table_lists_the_classes_in_labels_or_predictions(monkeypatch):
    """Of many classes the logged table shows those present (in labels or predictions) and says
    how many it leaves out; last_per_class keeps them all."""
    import densevit.evaluation.iou_metric as iou_module
    logged = []
    monkeypatch.setattr(iou_module, 'print_log', lambda msg, **kw: logged.append(msg))
    metric = _metric([f'class{i}' for i in range(150)])
    _run(metric, [_sample([[0, 7], [7, 7]], [[0, 0], [7, 7]])])
    table = logged[-1]
    rows = [line for line in table.splitlines() if line.startswith('| class')]
    assert [r.split()[1] for r in rows] == ['class0', 'class7']
    assert '148 of 150 classes' in table
    assert len(metric.last_per_class) == 150


def test_ignore_index_pixels_are_excluded():
    gt = torch.tensor([[0, 1], [7, 7]])
    good = torch.tensor([[0, 1], [0, 0]])
    bad = torch.tensor([[0, 1], [1, 1]])  # differs from `good` only under the ignored pixels
    r_good = _run(_metric('ab', ignore_index=7), [_sample(good, gt)])
    r_bad = _run(_metric('ab', ignore_index=7), [_sample(bad, gt)])
    assert r_good == r_bad == {'aAcc': 100.0, 'mIoU': 100.0, 'mAcc': 100.0}


def _reference(preds, gts, num_classes, ignore_index=255):
    """mIoU / mAcc / aAcc from a confusion matrix built with np.add.at (an independent route)."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, g in zip(preds, gts):
        keep = g != ignore_index
        np.add.at(conf, (g[keep], p[keep]), 1)
    tp = np.diag(conf).astype(float)
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = tp / (conf.sum(0) + conf.sum(1) - tp)
        acc = tp / conf.sum(1)
    return {'aAcc': round(tp.sum() / conf.sum() * 100, 2),
            'mIoU': round(np.nanmean(iou) * 100, 2),
            'mAcc': round(np.nanmean(acc) * 100, 2)}


def test_two_halves_merged_equal_one_pass_and_reference():
    g = torch.Generator().manual_seed(1)
    gts = torch.randint(0, 5, (6, 12, 10), generator=g)
    gts[torch.rand(gts.shape, generator=g) < 0.1] = 255
    preds = torch.where(torch.rand(gts.shape, generator=g) < 0.6, gts.clamp(max=4),
                        torch.randint(0, 5, gts.shape, generator=g))
    samples = [_sample(p, t) for p, t in zip(preds, gts)]
    names = [f'c{i}' for i in range(5)]

    whole = _metric(names)
    whole.process({}, samples)
    first, second = _metric(names), _metric(names)
    first.process({}, samples[:2])  # uneven halves, as two ranks with different loads
    second.process({}, samples[2:])
    merged = _metric(names).compute_metrics(second.results + first.results)
    assert merged == whole.compute_metrics(whole.results)
    assert merged == _reference(preds.numpy(), gts.numpy(), 5)


def test_evaluator_prefix_registry_and_datasample_inputs():
    metric = METRICS.build(dict(type='IoUMetric', prefix='val'))
    evaluator = Evaluator(metric)
    evaluator.dataset_meta = {'classes': ['a', 'b']}
    gt = torch.tensor([[[0, 1], [1, 1]]])
    ds = DataSample(gt_sem_seg=PixelData(data=gt), pred_sem_seg=PixelData(data=gt.clone()))
    evaluator.process([ds])
    assert evaluator.evaluate(1) == {'val/aAcc': 100.0, 'val/mIoU': 100.0, 'val/mAcc': 100.0}


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match='mFoo'):
        IoUMetric(iou_metrics=('mFoo', ))
    metric = _metric('ab')
    with pytest.raises(ValueError, match='outside'):
        metric.process({}, [_sample([[0, 2]], [[0, 1]])])
    with pytest.raises(ValueError, match='shape'):
        metric.process({}, [_sample([[0, 1]], [[0], [1]])])
    with pytest.raises(RuntimeError, match='classes'):
        IoUMetric().process({}, [_sample([[0]], [[0]])])
