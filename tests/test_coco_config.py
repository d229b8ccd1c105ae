"""The COCO base config runs on the synthetic stand-in with only data_root changed: its training
pipeline (box clipping, then ViTDet's flip + large-scale jitter and nothing else) yields consistent
boxes and masks at most the jitter's size, and its evaluator scores ground truth given back as
predictions at AP 1."""
import os.path as osp

import torch
from mmengine.evaluator import Evaluator

from densevit.apis import load_config
from densevit.registry import DATASETS, METRICS
from densevit.structures import DataSample, InstanceData

from .conftest import ROOT

CONFIG = osp.join(ROOT, 'configs/_base_/datasets/coco_instance.py')


def test_train_pipeline_on_the_stand_in(coco_root):
    cfg = load_config(CONFIG, {'data_root': coco_root})
    dataset_cfg = cfg.train_dataloader.dataset
    types = [step['type'] for step in dataset_cfg.pipeline]
    # boxes are clipped before any albumentations transform sees them
    assert types[1:3] == ['LoadAnnotations', 'ClipBoxes']
    # ViTDet's recipe: flip + LSJ only, no photometric distortion
    assert types[3:] == ['RandomFlip', 'LargeScaleJitter', 'PackDetInputs']
    for step in dataset_cfg.pipeline:
        if step['type'] == 'LargeScaleJitter':
            step['scale'] = (96, 96)
    dataset = DATASETS.build(dataset_cfg)
    assert dataset.metainfo['cat_ids'][0] == 1 and len(dataset.metainfo['classes']) == 80
    for index in range(4):
        item = dataset[index]
        _, h, w = item['inputs'].shape  # not padded: the data preprocessor pads to the square
        assert h <= 96 and w <= 96 and item['data_samples'].img_shape == (h, w)
        gt = item['data_samples'].gt_instances
        assert gt.masks.shape[1:] == (h, w)
        for box, mask in zip(gt.bboxes, gt.masks):  # every box is its mask's tight box (1 px)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert torch.allclose(box, tight, atol=1.0), (box, tight)


def test_evaluator_scores_ground_truth_as_perfect(coco_root):
    cfg = load_config(CONFIG, {'data_root': coco_root})
    assert cfg.val_evaluator.ann_file == coco_root + 'annotations/instances_val2017.json'
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    evaluator = Evaluator(METRICS.build(cfg.val_evaluator))
    evaluator.dataset_meta = dataset.metainfo
    for index in range(len(dataset)):
        sample = dataset[index]['data_samples']
        gt = sample.gt_instances
        prediction = DataSample(metainfo=sample.metainfo)
        prediction.pred_instances = InstanceData(
            bboxes=gt.bboxes, labels=gt.labels, scores=torch.ones(len(gt.labels)),
            masks=gt.masks.bool())
        evaluator.process([prediction])
    metrics = evaluator.evaluate(len(dataset))
    assert metrics['coco/bbox_mAP'] == 1.0 and metrics['coco/segm_mAP'] == 1.0
