"""PromptedIoUMetric against hand-computed means, from data samples as the model leaves them."""
import math

import pytest
import torch

from densevit.evaluation.prompted_metric import PromptedIoUMetric
from densevit.registry import METRICS
from densevit.structures import DataSample


def _sample(**ious) -> DataSample:
    sample = DataSample()
    sample.prompted_ious = {mode.replace('_', '-'): torch.tensor(v) for mode, v in ious.items()}
    return sample


def _mask_iou(pred: list[list[int]], gt: list[list[int]]) -> float:
    pred, gt = torch.tensor(pred, dtype=torch.bool), torch.tensor(gt, dtype=torch.bool)
    return float((pred & gt).sum() / (pred | gt).sum())


def test_registered_with_the_default_prefix():
    metric = METRICS.build(dict(type='PromptedIoUMetric'))
    assert isinstance(metric, PromptedIoUMetric) and metric.prefix == 'prompted'


def test_miou_is_the_mean_over_all_instances_of_all_images():
    # crafted predictions: instance IoUs from masks, by hand
    gt = [[0, 1, 1, 0],
          [0, 1, 1, 0]]
    exact = [[0, 1, 1, 0],
             [0, 1, 1, 0]]  # IoU 1
    half = [[0, 1, 0, 0],
            [0, 1, 0, 0]]  # 2 / 4 = 0.5
    grown = [[1, 1, 1, 0],
             [0, 1, 1, 1]]  # 4 / 6
    assert _mask_iou(exact, gt) == 1.0 and _mask_iou(half, gt) == 0.5
    assert _mask_iou(grown, gt) == pytest.approx(4 / 6)
    # image A: two instances, image B: one; the mean is over the three instances (not the
    # mean of per-image means: (1 + 0.5) / 2 and 4/6 would give 0.7083)
    samples = [_sample(**{'1_point': [_mask_iou(exact, gt), _mask_iou(half, gt)],
                          '1_box': [1.0, 1.0]}),
               _sample(**{'1_point': [_mask_iou(grown, gt)], '1_box': [0.25]})]
    metric = PromptedIoUMetric()
    metric.process({}, samples)
    results = metric.compute_metrics(metric.results)
    assert list(results) == ['1-point_mIoU', '1-box_mIoU']
    assert results['1-point_mIoU'] == pytest.approx((1 + 0.5 + 4 / 6) / 3)
    assert results['1-box_mIoU'] == pytest.approx(2.25 / 3)


def test_images_without_instances_count_for_nothing_and_modes_keep_their_order():
    samples = [_sample(**{'3_click': [0.9, 0.7], '1_click': [0.5, 0.1]}),
               _sample(**{'3_click': [], '1_click': []})]
    metric = PromptedIoUMetric(modes=['1-click', '3-click'])
    metric.process({}, samples)
    assert metric.compute_metrics(metric.results) == pytest.approx(
        {'1-click_mIoU': 0.3, '3-click_mIoU': 0.8})


def test_no_instances_at_all_is_nan():
    metric = PromptedIoUMetric()
    metric.process({}, [_sample(**{'1_box': []})])
    assert math.isnan(metric.compute_metrics(metric.results)['1-box_mIoU'])


def test_the_table_is_logged(monkeypatch):
    lines = []
    monkeypatch.setattr('densevit.evaluation.prompted_metric.print_log',
                        lambda msg, **kw: lines.append(msg))
    metric = PromptedIoUMetric()
    metric.process({}, [_sample(**{'1_point': [0.5, 1.0]})])
    metric.compute_metrics(metric.results)
    table = '\n'.join(lines)
    assert '| 1-point |' in table and '0.7500' in table and '| Instances |' in table


def test_missing_modes_and_samples_without_ious_are_errors():
    metric = PromptedIoUMetric(modes=['1-box', '5-click'])
    metric.process({}, [_sample(**{'1_box': [1.0]})])
    with pytest.raises(KeyError, match=r"modes \['5-click'\] were not scored"):
        metric.compute_metrics(metric.results)
    with pytest.raises(KeyError, match='prompted_ious'):
        metric.process({}, [DataSample()])


def test_evaluator_over_two_halves_equals_the_whole():
    """What a dist evaluation does: each process keeps its images' results, mmengine gathers
    the lists; the mean over the gathered instances equals the single-process one."""
    samples = [_sample(**{'1_point': [0.1 * i, 0.05 * i + 0.3][:1 + i % 2]}) for i in range(7)]
    whole = PromptedIoUMetric()
    whole.process({}, samples)
    first, second = PromptedIoUMetric(), PromptedIoUMetric()
    first.process({}, samples[0::2])
    second.process({}, samples[1::2])
    gathered = first.results + second.results
    assert first.compute_metrics(gathered) == pytest.approx(whole.compute_metrics(whole.results))
