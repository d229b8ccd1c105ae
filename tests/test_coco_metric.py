"""CocoMetric (faster-coco-eval inside) against pycocotools' COCOeval on the same detections."""
import contextlib
import io
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from mmengine.evaluator import Evaluator
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from densevit.evaluation.coco_metric import CocoMetric
from densevit.registry import METRICS
from densevit.structures import DataSample, InstanceData

# pycocotools' mask.decode trips numpy 2's __array__(copy=) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

# Real COCO ids with gaps, so a label -> category id mistake cannot go unnoticed.
CATEGORIES = [{'id': 1, 'name': 'person'}, {'id': 3, 'name': 'car'},
              {'id': 18, 'name': 'dog'}, {'id': 44, 'name': 'bottle'}]
CAT_IDS = [c['id'] for c in CATEGORIES]
IMAGES = [(397133, 120, 160), (37777, 96, 128), (252219, 200, 240), (87038, 80, 100)]
NAMES = ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl']
KEYS = ['mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l',
        'AR_1', 'AR_10', 'AR_100', 'AR_s', 'AR_m', 'AR_l']


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Run lengths of a mask in column-major order, starting with a run of zeros (COCO crowd)."""
    flat = mask.flatten(order='F').astype(np.int8)  # (H, W) -> (H*W,) column-major
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {'counts': counts, 'size': list(mask.shape)}


def _ellipse(h, w, box):
    x, y, bw, bh = box
    yy, xx = np.mgrid[:h, :w] + 0.5  # pixel centres
    return ((xx - x - bw / 2) / (bw / 2)) ** 2 + ((yy - y - bh / 2) / (bh / 2)) ** 2 <= 1


def _make_gt(rng):
    """A COCO GT dict: polygons, compressed RLEs, one crowd (uncompressed RLE); and GT masks."""
    anns, masks = [], {}
    for img_id, h, w in IMAGES:
        for j in range(int(rng.integers(3, 7))):
            bw, bh = (int(v) for v in rng.integers(8, [w - 4, h - 4]))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            crowd = img_id == IMAGES[0][0] and j == 0
            if crowd:
                segm = _uncompressed_rle(_ellipse(h, w, (x0, y0, bw, bh)))
            elif j % 2:  # hexagon polygon
                t = np.linspace(0, 2 * np.pi, 7)[:-1] + rng.uniform(0, 0.5)
                poly = np.stack([x0 + bw / 2 * (1 + np.cos(t)), y0 + bh / 2 * (1 + np.sin(t))], 1)
                segm = [poly.flatten().round(2).tolist()]  # (6, 2) -> (12,) x, y pairs
            else:  # compressed RLE of an ellipse
                rle = mask_util.encode(np.asfortranarray(_ellipse(h, w, (x0, y0, bw, bh)),
                                                         dtype=np.uint8))
                segm = {'counts': rle['counts'].decode(), 'size': [h, w]}
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(segm, list) \
                else mask_util.frPyObjects(segm, h, w) if isinstance(segm['counts'], list) else segm
            ann_id = len(anns) + 1
            masks[ann_id] = mask_util.decode(rle).astype(bool)
            anns.append({'id': ann_id, 'image_id': img_id,
                         'category_id': CAT_IDS[int(rng.integers(0, 4))],
                         'segmentation': segm, 'area': float(mask_util.area(rle)),
                         'bbox': [float(v) for v in mask_util.toBbox(rle)],
                         'iscrowd': int(crowd)})
    gt = {'images': [{'id': i, 'height': h, 'width': w, 'file_name': f'{i:012d}.jpg'}
                     for i, h, w in IMAGES],
          'annotations': anns, 'categories': CATEGORIES}
    return gt, masks


def _make_predictions(gt, gt_masks, rng):
    """Per image: jittered boxes, shifted masks, some wrong labels, false positives; xyxy."""
    preds = {}
    for img_id, h, w in IMAGES:
        boxes, labels, masks = [], [], []
        for ann in (a for a in gt['annotations'] if a['image_id'] == img_id):
            if rng.random() < 0.15:
                continue  # missed
            x, y, bw, bh = ann['bbox']
            boxes.append([x, y, x + bw, y + bh] + rng.normal(0, 2.0, 4))
            label = CAT_IDS.index(ann['category_id'])
            labels.append(label if rng.random() < 0.85 else int(rng.integers(0, 4)))
            shift = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
            masks.append(np.roll(gt_masks[ann['id']], shift, axis=(0, 1)))
        for _ in range(2):  # false positives with rectangle masks
            x0, y0 = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            x1, y1 = x0 + rng.uniform(5, w - x0), y0 + rng.uniform(5, h - y0)
            boxes.append([x0, y0, x1, y1])
            labels.append(int(rng.integers(0, 4)))
            m = np.zeros((h, w), bool)
            m[int(y0):int(y1), int(x0):int(x1)] = True
            masks.append(m)
        n = len(boxes)
        preds[img_id] = {'bboxes': torch.tensor(np.array(boxes), dtype=torch.float32),
                         'scores': torch.tensor(rng.uniform(0.05, 1, n), dtype=torch.float32),
                         'labels': torch.tensor(labels, dtype=torch.long),
                         'masks': torch.from_numpy(np.stack(masks))}
    return preds


def _samples(preds):
    return [{'img_id': img_id, 'ori_shape': tuple(p['masks'].shape[1:]),
             'pred_instances': p} for img_id, p in preds.items()]


def _reference_stats(gt_file, preds, cat_ids, iou_type):
    """pycocotools on the same detections, converted here independently of the metric."""
    dets = []
    for img_id, p in preds.items():
        for box, score, label, mask in zip(p['bboxes'].tolist(), p['scores'].tolist(),
                                           p['labels'].tolist(), p['masks'].numpy()):
            det = {'image_id': img_id, 'category_id': cat_ids[label], 'score': score,
                   'bbox': [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
            if iou_type == 'segm':
                # masks keep their box, so pycocotools takes a detection's area from the box, as
                # it does for the results files of published COCO numbers
                det['segmentation'] = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
            dets.append(det)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.params.imgIds = sorted(preds)
        ev.params.catIds = sorted(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _run_metric(gt_file, preds, meta, metric=('bbox', 'segm'), **cfg):
    m = CocoMetric(ann_file=str(gt_file), metric=metric, **cfg)
    m.dataset_meta = meta
    m.process({}, _samples(preds))
    return m.compute_metrics(m.results)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    rng = np.random.default_rng(0)
    gt, gt_masks = _make_gt(rng)
    gt_file = tmp_path_factory.mktemp('coco') / 'instances_val2017.json'
    gt_file.write_text(json.dumps(gt))
    return gt_file, gt, gt_masks, _make_predictions(gt, gt_masks, rng)


def test_all_12_numbers_match_pycocotools(coco):
    gt_file, _, _, preds = coco
    res = _run_metric(gt_file, preds, {'classes': [c['name'] for c in CATEGORIES],
                                       'cat_ids': CAT_IDS})
    for iou_type in ('bbox', 'segm'):
        ref = _reference_stats(gt_file, preds, CAT_IDS, iou_type)
        got = [res[f'{iou_type}_{k}'] for k in KEYS]
        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=f'{iou_type}: {NAMES}')
        assert 0.05 < ref[0] < 0.95  # a test case that is neither trivial nor hopeless


def test_per_category_table_lists_the_categories_with_ground_truth(coco, tmp_path,
                                                                  monkeypatch):
    """A category of the label space without annotations (as most of COCO's 80 on a small
    split) gets no row of NaN; the table says how many it leaves out."""
    import densevit.evaluation.coco_metric as coco_module
    logged = []
    monkeypatch.setattr(coco_module, 'print_log', lambda msg, **kw: logged.append(msg))
    gt_file, gt, _, preds = coco
    gt = dict(gt, categories=gt['categories'] + [{'id': 17, 'name': 'cat'}])
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    _run_metric(tmp_path / 'gt.json', preds,
                {'classes': [c['name'] for c in CATEGORIES] + ['cat'], 'cat_ids': CAT_IDS + [17]},
                metric=('bbox',))
    table = next(msg for msg in logged if msg.startswith('per category bbox'))
    rows = [line.split()[1] for line in table.splitlines()[4:] if line.startswith('| ')]
    assert rows == [c['name'] for c in CATEGORIES]
    assert '1 of 5 categories' in table


def test_label_subset_maps_through_cat_ids_and_by_name(coco):
    gt_file, _, _, preds = coco
    keep = [3, 18]  # a dataset of only 'car' and 'dog': labels 0 -> 3, 1 -> 18
    sub = {}
    for img_id, p in preds.items():
        cats = torch.tensor([CAT_IDS[i] for i in p['labels']])
        sel = (cats == 3) | (cats == 18)
        sub[img_id] = {k: v[sel] for k, v in p.items()}
        sub[img_id]['labels'] = (cats[sel] == 18).long()
    res = _run_metric(gt_file, sub, {'classes': ['car', 'dog'], 'cat_ids': keep})
    ref = {t: _reference_stats(gt_file, sub, keep, t) for t in ('bbox', 'segm')}
    for t in ('bbox', 'segm'):
        np.testing.assert_allclose([res[f'{t}_{k}'] for k in KEYS], ref[t], atol=1e-6)
    # without cat_ids, the names are looked up in the annotation file: same numbers
    by_name = _run_metric(gt_file, sub, {'classes': ['car', 'dog']})
    assert by_name == res
    with pytest.raises(KeyError, match='zebra'):
        _run_metric(gt_file, sub, {'classes': ['car', 'zebra']})


def test_perfect_predictions_give_ap_1_through_evaluator(coco):
    gt_file, gt, gt_masks, _ = coco
    evaluator = Evaluator(METRICS.build(dict(type='CocoMetric', ann_file=str(gt_file),
                                             metric=['bbox', 'segm'])))
    evaluator.dataset_meta = {'classes': [c['name'] for c in CATEGORIES], 'cat_ids': CAT_IDS}
    for img_id, _, _ in IMAGES:
        anns = [a for a in gt['annotations'] if a['image_id'] == img_id and not a['iscrowd']]
        boxes = torch.tensor([a['bbox'] for a in anns], dtype=torch.float64)
        boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) -> (x1, y1, x2, y2)
        pred = InstanceData(bboxes=boxes, scores=torch.linspace(1, 0.5, len(anns)),
                            labels=torch.tensor([CAT_IDS.index(a['category_id']) for a in anns]),
                            masks=torch.from_numpy(np.stack([gt_masks[a['id']] for a in anns])))
        evaluator.process([DataSample(pred_instances=pred, metainfo={'img_id': img_id})])
    res = evaluator.evaluate(len(IMAGES))
    for t in ('bbox', 'segm'):
        assert res[f'coco/{t}_mAP'] == pytest.approx(1.0)
        assert res[f'coco/{t}_mAP_50'] == pytest.approx(1.0)
        assert res[f'coco/{t}_AR_100'] == pytest.approx(1.0)


def test_empty_predictions_give_zero_not_a_crash(coco):
    gt_file, _, _, preds = coco
    empty = {img_id: {'bboxes': torch.zeros(0, 4), 'scores': torch.zeros(0),
                      'labels': torch.zeros(0, dtype=torch.long),
                      'masks': torch.zeros(0, *p['masks'].shape[1:], dtype=torch.bool)}
             for img_id, p in preds.items()}
    res = _run_metric(gt_file, empty, {'cat_ids': CAT_IDS})
    assert res['bbox_mAP'] == 0 and res['segm_mAP'] == 0 and res['bbox_AR_100'] == 0
    assert all(v in (0.0, -1.0) for v in res.values())
    # one image with predictions, the others empty: still the pycocotools numbers
    mixed = {**empty, IMAGES[1][0]: preds[IMAGES[1][0]]}
    res = _run_metric(gt_file, mixed, {'cat_ids': CAT_IDS}, metric='bbox')
    np.testing.assert_allclose([res[f'bbox_{k}'] for k in KEYS],
                               _reference_stats(gt_file, mixed, CAT_IDS, 'bbox'), atol=1e-6)


def test_format_only_writes_results_json(coco, tmp_path):
    gt_file, _, _, preds = coco
    prefix = str(tmp_path / 'results')
    assert _run_metric(gt_file, preds, {'cat_ids': CAT_IDS}, format_only=True,
                       outfile_prefix=prefix) == {}
    n = sum(len(p['scores']) for p in preds.values())
    for t in ('bbox', 'segm'):
        with contextlib.redirect_stdout(io.StringIO()):
            dt = COCO(str(gt_file)).loadRes(f'{prefix}.{t}.json')
        assert len(dt.anns) == n
        assert {a['category_id'] for a in dt.anns.values()} <= set(CAT_IDS)


def test_errors_name_the_problem(coco, tmp_path):
    gt_file, _, _, preds = coco
    with pytest.raises(FileNotFoundError, match='nope.json'):
        CocoMetric(ann_file=str(tmp_path / 'nope.json'))
    with pytest.raises(KeyError, match='proposal'):
        CocoMetric(ann_file=str(gt_file), metric='proposal')
    with pytest.raises(ValueError, match='outfile_prefix'):
        CocoMetric(ann_file=str(gt_file), format_only=True)
    with pytest.raises(KeyError, match='masks'):
        no_masks = {i: {k: v for k, v in p.items() if k != 'masks'} for i, p in preds.items()}
        _run_metric(gt_file, no_masks, {'cat_ids': CAT_IDS})
    with pytest.raises(ValueError, match='outside'):
        _run_metric(gt_file, preds, {'cat_ids': CAT_IDS[:2]}, metric='bbox')
    with pytest.raises(ValueError, match='ori_shape'):
        cropped = {i: dict(p, masks=p['masks'][:, :-1]) for i, p in preds.items()}
        _run_metric(gt_file, cropped, {'cat_ids': CAT_IDS})
