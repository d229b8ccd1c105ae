"""Detector and DetDataPreprocessor, checked with a fake head whose predictions are fixed: padding
and padding masks, training targets by hand, top-k post-processing by hand (focal and softmax),
boxes and masks back to original-image pixels through the real Resize / flip pipeline on a real
image file, the non-finite-loss guard, images without annotations, and a short Runner run on the
synthetic COCO stand-in with CocoMetric."""
from __future__ import annotations

import math
import os.path as osp
import uuid

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper
from torch import nn
from torchvision.ops import box_convert

import densevit.models  # noqa: F401  (registers the modules)
from densevit.datasets.transforms import build_pipeline
from densevit.models.tasks.det_data_preprocessor import padding_mask
from densevit.registry import MODELS
from densevit.structures import DataSample, InstanceData


# ------------------------------------------------------------------ the fake head
@MODELS.register_module(name='_TestFixedDetHead', force=True)
class FixedDetHead(nn.Module):
    """Follows the detection Head API, but predicts fixed ``logits`` (Q, C or C + 1) and ``boxes``
    (Q, 4) cxcywh for every image; with ``with_masks``, mask logits +10 inside each query's box and
    -10 outside, drawn at stride 4 of the padded grid using the unpadded size it reads from the
    padding mask. Its losses depend on the features (so gradients reach the backbone) and are
    poisoned with NaN when ``poison`` is set. Records what it was last called with in ``seen``."""

    def __init__(self, *, input_shapes, in_features=('s32',), num_classes: int = 4,
                 criterion: dict | None = None, class_loss: str = 'focal',
                 with_masks: bool = False, logits=None, boxes=None) -> None:
        super().__init__()
        self.num_classes, self.class_loss, self.with_masks = num_classes, class_loss, with_masks
        self.in_features = tuple(in_features)
        channels = input_shapes[self.in_features[0]].channels
        if logits is None:  # query q scores class q % C highest
            logits = [[4.0 - q if c == q % num_classes else -4.0 for c in range(num_classes)]
                      + ([0.0] if class_loss == 'ce' else []) for q in range(3)]
        if boxes is None:
            boxes = [[0.5, 0.5, 0.5, 0.5], [0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]
        self.register_buffer('logits', torch.tensor(logits, dtype=torch.float), False)
        self.register_buffer('boxes', torch.tensor(boxes, dtype=torch.float), False)
        self.proj = nn.Linear(channels, 4)
        self.poison = False
        self.seen: dict = {}

    def forward(self, features, padding_mask, targets=None):
        b = padding_mask.shape[0]
        self.seen.update(features=features, padding_mask=padding_mask)
        preds = dict(logits=self.logits.expand(b, -1, -1), boxes=self.boxes.expand(b, -1, -1))
        if self.with_masks:
            preds['masks'] = box_mask_logits(preds['boxes'], padding_mask)
        return preds

    def loss(self, features, padding_mask, targets):
        self.seen['targets'] = targets
        self.forward(features, padding_mask)
        # (B, C, h, w) -> (B, C) -> (B, 4) learned boxes, pulled toward each image's targets
        learned = self.proj(features[self.in_features[0]].mean((2, 3))).sigmoid()
        l1 = [(learned[i] - t['boxes']).abs().sum() for i, t in enumerate(targets)]
        num_boxes = max(sum(len(t['boxes']) for t in targets), 1)
        loss_bbox = sum(l1) / num_boxes + 0.0 * learned.sum()
        loss_cls = learned.square().mean()
        if self.poison:
            loss_bbox = loss_bbox * float('nan')
        return {'loss_cls': loss_cls, 'loss_bbox': loss_bbox, 'd0.loss_cls': loss_cls * 0.5}

    def predict(self, features, padding_mask):
        return self.forward(features, padding_mask)


def box_mask_logits(boxes: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """(B, Q, 4) cxcywh of the unpadded image -> (B, Q, ceil(Hp/4), ceil(Wp/4)) logits, +10 at
    the stride-4 cells whose centre (pixel 4j + 1.5) lies inside the box."""
    b, hp, wp = pad.shape
    valid_h = (~pad).any(2).sum(1).float()  # (B,)
    valid_w = (~pad).any(1).sum(1).float()
    scale = torch.stack([valid_w, valid_h, valid_w, valid_h], dim=-1)[:, None]  # (B, 1, 4)
    x1, y1, x2, y2 = (box_convert(boxes, 'cxcywh', 'xyxy') * scale).unbind(-1)  # (B, Q) each
    ys = torch.arange(-(-hp // 4), dtype=torch.float) * 4 + 1.5
    xs = torch.arange(-(-wp // 4), dtype=torch.float) * 4 + 1.5
    inside_y = (ys >= y1[..., None]) & (ys < y2[..., None])  # (B, Q, h4)
    inside_x = (xs >= x1[..., None]) & (xs < x2[..., None])  # (B, Q, w4)
    inside = inside_y[..., :, None] & inside_x[..., None, :]
    return torch.where(inside, 10.0, -10.0)


# ------------------------------------------------------------------ helpers
def _detector(head=None, neck=True, **kwargs):
    torch.manual_seed(0)
    cfg = dict(type='Detector',
               backbone=dict(type='TimmBackbone', model_name='resnet18', pretrained=False),
               head=dict(type='_TestFixedDetHead', **(head or {})), **kwargs)
    if neck:
        cfg['neck'] = dict(type='ChannelMapper', out_channels=64, num_extra_levels=1)
    return MODELS.build(cfg)


def _sample(img_shape, ori_shape=None, boxes=(), labels=(), masks=None, **meta):
    shapes = {} if img_shape is None else dict(img_shape=img_shape,
                                               ori_shape=ori_shape or img_shape)
    sample = DataSample(metainfo=dict(**shapes, **meta))
    gt = InstanceData()
    gt.bboxes = torch.tensor(boxes, dtype=torch.float).reshape(-1, 4)
    gt.labels = torch.tensor(labels, dtype=torch.long)
    if masks is not None:
        gt.masks = masks
    sample.gt_instances = gt
    return sample


def _write_image(path, h, w) -> str:
    rng = np.random.default_rng(0)
    cv2.imwrite(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


# ------------------------------------------------------------------ preprocessor
def test_preprocessor_pads_masks_in_training_only_and_padding_mask_follows_img_shape():
    pre = MODELS.build(dict(type='DetDataPreprocessor', size_divisor=16))
    imgs = [torch.zeros(3, 20, 30, dtype=torch.uint8), torch.zeros(3, 25, 18, dtype=torch.uint8)]
    for training in (True, False):
        samples = [_sample(None, boxes=[[0, 0, 5, 5]], labels=[1],
                           masks=torch.ones(1, *img.shape[1:], dtype=torch.bool))
                   for img in imgs]  # img_shape comes from the preprocessor
        out = pre(dict(inputs=imgs, data_samples=samples), training)
        assert out['inputs'].shape == (2, 3, 32, 32)
        got = out['data_samples']
        assert [s.metainfo['img_shape'] for s in got] == [(20, 30), (25, 18)]
        assert all(s.metainfo['pad_shape'] == (32, 32) for s in got)
        masks = got[0].gt_instances.masks
        if training:
            assert masks.shape == (1, 32, 32) and masks.dtype == torch.bool
            assert masks[0, :20, :30].all() and masks.sum() == 20 * 30
        else:
            assert masks.shape == (1, 20, 30)
        pad = padding_mask(got, (32, 32))
        expected = torch.ones(2, 32, 32, dtype=torch.bool)
        expected[0, :20, :30] = False
        expected[1, :25, :18] = False
        assert torch.equal(pad, expected)


def test_lsj_image_padded_to_the_square_in_training_only():
    # LargeScaleJitter hands over a 40 x 50 image (it does not pad); the preprocessor pads the
    # training batch to the LSJ square after normalisation, with 0, and masks the border
    pre = MODELS.build(dict(type='DetDataPreprocessor', size=(64, 64)))
    image = torch.full((3, 40, 50), 200, dtype=torch.uint8)
    sample = DataSample(metainfo=dict(img_shape=(40, 50), ori_shape=(80, 100)))
    out = pre(dict(inputs=[image], data_samples=[sample]), True)
    assert out['inputs'].shape == (1, 3, 64, 64)
    assert (out['inputs'][0, :, 40:] == 0).all() and (out['inputs'][0, :, :, 50:] == 0).all()
    assert (out['inputs'][0, :, :40, :50] != 0).all()
    pad = padding_mask(out['data_samples'], (64, 64))
    assert not pad[0, :40, :50].any() and pad[0, 40:].all() and pad[0, :, 50:].all()
    # at test time only the batch's own size counts (the test pipeline sets the size)
    sample = DataSample(metainfo=dict(img_shape=(40, 50), ori_shape=(80, 100)))
    assert pre(dict(inputs=[image], data_samples=[sample]), False)['inputs'].shape == (
        1, 3, 40, 50)
    assert padding_mask(None, (8, 8), batch_size=2).shape == (2, 8, 8)


def test_masks_larger_than_the_batch_are_an_error():
    pre = MODELS.build(dict(type='DetDataPreprocessor'))
    s = _sample((8, 8), boxes=[[0, 0, 1, 1]], labels=[0], masks=torch.ones(1, 9, 8).bool())
    with pytest.raises(ValueError, match=r'\(9, 8\).*\(8, 8\)'):
        pre(dict(inputs=[torch.zeros(3, 8, 8, dtype=torch.uint8)], data_samples=[s]), True)


# ------------------------------------------------------------------ training targets
def test_targets_normalised_by_the_unpadded_size_by_hand():
    model = _detector(head=dict(with_masks=True)).train()
    mask = torch.zeros(1, 40, 80, dtype=torch.bool)
    mask[0, 4:20, 8:24] = True
    samples = [_sample((40, 80), boxes=[[8, 4, 24, 20]], labels=[3], masks=mask),
               _sample((64, 96), boxes=[[0, 0, 96, 64], [48, 32, 72, 48]], labels=[0, 2],
                       masks=torch.ones(2, 64, 96, dtype=torch.bool))]
    inputs = torch.randn(2, 3, 64, 96)
    losses = model(inputs, samples, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox', 'd0.loss_cls'}
    t0, t1 = model.head.seen['targets']
    torch.testing.assert_close(t0['boxes'], torch.tensor([[0.2, 0.3, 0.2, 0.4]]))
    torch.testing.assert_close(t1['boxes'], torch.tensor([[0.5, 0.5, 1.0, 1.0],
                                                          [60 / 96, 40 / 64, 0.25, 0.25]]))
    assert t0['labels'].tolist() == [3] and t1['labels'].tolist() == [0, 2]
    assert t0['labels'].dtype == torch.int64
    assert t0['masks'].shape == (1, 64, 96) and t0['masks'].dtype == torch.bool
    assert t0['masks'].sum() == 16 * 16 and t0['masks'][0, 4:20, 8:24].all()
    pad = model.head.seen['padding_mask']
    assert pad.shape == (2, 64, 96)
    assert pad[0].sum() == 64 * 96 - 40 * 80 and not pad[0, :40, :80].any()
    assert not pad[1].any()


def test_images_without_annotations_make_empty_targets_that_still_train():
    model = _detector(head=dict(with_masks=True)).train()
    empty = _sample((64, 64), masks=torch.zeros(0, 64, 64, dtype=torch.bool))
    bare = DataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))  # no gt_instances
    one = _sample((64, 64), boxes=[[0, 0, 32, 32]], labels=[1],
                  masks=torch.ones(1, 64, 64, dtype=torch.bool))
    for batch in ([empty, one], [empty, bare]):
        model.zero_grad()
        losses = model(torch.randn(2, 3, 64, 64), batch, mode='loss')
        targets = model.head.seen['targets']
        assert targets[0]['boxes'].shape == (0, 4) and targets[0]['labels'].shape == (0,)
        assert targets[0]['masks'].shape == (0, 64, 64)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        grads = [p.grad for p in model.backbone.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match=r'img_id 8 has gt labels \[4\] outside \[0, 4\)'):
        bad = _sample((64, 64), boxes=[[0, 0, 8, 8]], labels=[4], img_id=8,
                      masks=torch.ones(1, 64, 64, dtype=torch.bool))
        model(torch.randn(2, 3, 64, 64), [one, bad], mode='loss')
    with pytest.raises(ValueError, match='img_id 7.*with_mask=True'):
        model(torch.randn(1, 3, 64, 64), [_sample((64, 64), boxes=[[0, 0, 8, 8]], labels=[0],
                                                  img_id=7)], mode='loss')


# ------------------------------------------------------------------ non-finite losses
def test_non_finite_loss_raises_before_the_optimizer_step_naming_iteration_and_images():
    model = _detector(head=dict(with_masks=False))
    model.head.poison = True
    name = f'test_detector_{uuid.uuid4().hex}'
    MessageHub.get_instance(name).update_info('iter', 41)  # the newest hub is the current one
    samples = [_sample((32, 32), boxes=[[0, 0, 8, 8]], labels=[0], img_id=11,
                       img_path='val2017/000000000011.jpg'),
               _sample((32, 32), img_id=12, img_path='val2017/000000000012.jpg')]
    data = dict(inputs=[torch.zeros(3, 32, 32, dtype=torch.uint8)] * 2, data_samples=samples)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1.0))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    try:
        with pytest.raises(FloatingPointError) as info:
            model.train_step(data, optim)
    finally:
        MessageHub._instance_dict.pop(name, None)  # leave the current hub as it was
    message = str(info.value)
    for part in ('iteration 41', 'loss_bbox=nan', 'loss_cls=', 'd0.loss_cls=', 'img_id 11',
                 'val2017/000000000011.jpg', 'img_id 12', 'val2017/000000000012.jpg'):
        assert part in message, (part, message)
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]), f'{k} changed although the loss was NaN'


# ------------------------------------------------------------------ post-processing
FOCAL_LOGITS = [[2.0, -1.0, -3.0, 0.5],
                [-2.0, 3.0, -1.0, -4.0],
                [1.0, 0.0, 2.5, -5.0]]
BOXES = [[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.2, 0.4], [0.75, 0.5, 0.5, 1.0]]


def _pixel_xyxy(box, w, h):
    cx, cy, bw, bh = box
    return [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]


def test_focal_top_k_over_queries_and_classes_by_hand():
    model = _detector(head=dict(logits=FOCAL_LOGITS, boxes=BOXES),
                      test_cfg=dict(max_per_img=4)).eval()
    with torch.no_grad():
        (out,) = model.predict(torch.randn(1, 3, 64, 64),
                               [DataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))])
    pred = out.pred_instances
    # the four best logits: 3.0 (q1, c1), 2.5 (q2, c2), 2.0 (q0, c0), 1.0 (q2, c0)
    pairs = [(1, 1), (2, 2), (0, 0), (2, 0)]
    assert pred.labels.tolist() == [c for _, c in pairs]
    torch.testing.assert_close(pred.scores, torch.tensor([3.0, 2.5, 2.0, 1.0]).sigmoid())
    torch.testing.assert_close(pred.bboxes, torch.tensor(
        [_pixel_xyxy(BOXES[q], 64, 64) for q, _ in pairs]))
    assert pred.bboxes.dtype == torch.float32 and pred.labels.dtype == torch.int64


def test_softmax_drops_no_object_and_keeps_best_queries_by_hand():
    logits = [[1.0, 0.0, 5.0],   # no-object wins, but the query still reports class 0
              [0.0, 2.0, 0.0],
              [3.0, 3.5, -1.0]]
    model = _detector(head=dict(class_loss='ce', num_classes=2, logits=logits, boxes=BOXES),
                      test_cfg=dict(max_per_img=2)).eval()
    with torch.no_grad():
        (out,) = model.predict(torch.randn(1, 3, 64, 64), None)
    pred = out.pred_instances

    def prob(row, c):
        return math.exp(row[c]) / sum(math.exp(v) for v in row)

    scores = {q: max(prob(logits[q], 0), prob(logits[q], 1)) for q in range(3)}
    best = sorted(scores, key=scores.get, reverse=True)[:2]
    assert best == [1, 2]
    assert pred.labels.tolist() == [1, 1]
    torch.testing.assert_close(pred.scores, torch.tensor([scores[q] for q in best]))
    torch.testing.assert_close(pred.bboxes, torch.tensor(
        [_pixel_xyxy(BOXES[q], 64, 64) for q in best]))


def test_boxes_clipped_and_rescaled_by_scale_factor():
    # an image resized from (50, 100) to (25, 40) (w by 0.4, h by 0.5), padded to 32 x 64
    model = _detector(head=dict(logits=[[5.0, -9.0]], boxes=[[0.5, 0.5, 1.5, 0.5]],
                                num_classes=2)).eval()
    sample = DataSample(metainfo=dict(img_shape=(25, 40), ori_shape=(50, 100),
                                      scale_factor=(0.4, 0.5)))
    with torch.no_grad():
        (out,) = model.predict(torch.randn(1, 3, 32, 64), [sample])
    # x: (-0.25 .. 1.25) * 40 -> clipped to 0 .. 40 -> / 0.4 = 0 .. 100; y: 6.25 .. 18.75 / 0.5
    torch.testing.assert_close(out.pred_instances.bboxes[0], torch.tensor([0.0, 12.5, 100.0,
                                                                           37.5]))


def _pipeline_data(img_path, box, flip, training):
    """One sample of a real pipeline (load, annotations, keep-ratio resize, optional flip)."""
    x1, y1, x2, y2 = box
    instance = dict(bbox=list(box), bbox_label=3, ignore_flag=False,
                    mask=[[x1, y1, x2, y1, x2, y2, x1, y2]])
    steps = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_mask=True),
             dict(type='Resize', scale=(100, 100), keep_ratio=True)]
    if flip:
        steps.append(dict(type='RandomFlip', prob=1.0))
    steps.append(dict(type='PackDetInputs'))
    results = dict(img_path=img_path, img_id=5, instances=[instance])
    for step in build_pipeline(steps):
        results = step(results)
    return pseudo_collate([results])


@pytest.mark.parametrize('flip', [False, True], ids=['plain', 'flipped'])
def test_box_and_mask_round_trip_to_the_original_image(tmp_path, flip):
    """A known box on a real 60 x 90 image goes through Resize (to 67 x 100), an optional flip and
    padding (to 96 x 128) into a training target; a head that predicts exactly that target must
    give back the original box within a pixel, and a mask covering it, at ori_shape."""
    img_path = _write_image(str(tmp_path / 'image.jpg'), 60, 90)
    box = (10.0, 12.0, 50.0, 41.0)
    model = _detector(head=dict(with_masks=True, num_classes=4),
                      data_preprocessor=dict(type='DetDataPreprocessor', size_divisor=32))
    data = model.data_preprocessor(_pipeline_data(img_path, box, flip, True), True)
    assert data['inputs'].shape == (1, 3, 96, 128)
    meta = data['data_samples'][0].metainfo
    assert meta['img_shape'] == (67, 100) and meta['flip'] == flip
    model.train()
    model(**data, mode='loss')
    (target,) = model.head.seen['targets']
    # the head now predicts the target box for query 0, with class 3 the best score
    model.head.boxes = torch.cat([target['boxes'], model.head.boxes[1:]])
    model.head.logits[0] = torch.tensor([-5.0, -5.0, -5.0, 8.0])
    model.eval()
    data = model.data_preprocessor(_pipeline_data(img_path, box, flip, False), False)
    with torch.no_grad():
        (out,) = model(**data, mode='predict')
    pred = out.pred_instances
    assert pred.labels[0] == 3
    assert (pred.bboxes[0] - torch.tensor(box)).abs().max() < 1.0, pred.bboxes[0]
    masks = pred.masks
    assert masks.shape == (len(pred.scores), 60, 90) and masks.dtype == torch.bool
    region = torch.zeros(60, 90, dtype=torch.bool)
    region[12:41, 10:50] = True
    iou = (masks[0] & region).sum() / (masks[0] | region).sum()
    assert iou > 0.85, iou


# ------------------------------------------------------------------ modes, config, checkpoint
def test_tensor_mode_returns_the_head_predictions():
    model = _detector(head=dict(with_masks=True)).eval()
    with torch.no_grad():
        preds = model(torch.randn(2, 3, 64, 96), mode='tensor')
    assert preds['logits'].shape == (2, 3, 4) and preds['boxes'].shape == (2, 3, 4)
    assert preds['masks'].shape == (2, 3, 16, 24)
    assert not model.head.seen['padding_mask'].any()


def test_default_preprocessor_pads_to_the_coarsest_stride():
    assert _detector().data_preprocessor.size_divisor == 64  # ChannelMapper's extra s64
    assert _detector(neck=False, head=dict(in_features=('s32',))
                     ).data_preprocessor.size_divisor == 32


def test_a_chain_of_necks_feeds_the_head():
    """neck may be a list (detrex's ViTDet DINO: simple feature pyramid, then ChannelMapper):
    each neck is built from the one before, the head from the last, keys neck.0.*, neck.1.*."""
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='Detector',
        backbone=dict(type='ViT', arch='tiny', depth=1, window_size=0, global_attn_indexes=(),
                      use_rel_pos=False),
        neck=[dict(type='SimpleFeaturePyramid', out_channels=32, scale_factors=(2.0, 1.0, 0.5)),
              dict(type='ChannelMapper', in_features=('s8', 's16', 's32'), out_channels=64,
                   num_extra_levels=1)],
        head=dict(type='_TestFixedDetHead')))
    assert model.data_preprocessor.size_divisor == 64
    assert {k.split('.')[1] for k in model.state_dict() if k.startswith('neck.')} == {'0', '1'}
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.extract_feat(image)
        chained = model.neck[1](model.neck[0](model.backbone(image)))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
        's8': (64, 8, 8), 's16': (64, 4, 4), 's32': (64, 2, 2), 's64': (64, 1, 1)}
    for name, feat in features.items():
        torch.testing.assert_close(feat, chained[name])


def test_test_cfg_and_head_errors():
    with pytest.raises(KeyError, match=r"\['max_per_image'\].*mask_thr_binary.*max_per_img"):
        _detector(test_cfg=dict(max_per_image=10))
    with pytest.raises(ValueError, match='max_per_img'):
        _detector(test_cfg=dict(max_per_img=0))
    with pytest.raises(ValueError, match='mask_thr_binary'):
        _detector(test_cfg=dict(mask_thr_binary=2.0))
    with pytest.raises(ValueError, match="'softmax'"):
        _detector(head=dict(class_loss='softmax'))


def test_backbone_checkpoint_loaded_at_init_weights(tmp_path):
    source = _detector()
    path = tmp_path / 'backbone.pth'
    torch.save({'state_dict': source.backbone.state_dict()}, path)
    torch.manual_seed(1)
    target = MODELS.build(dict(type='Detector',
                               backbone=dict(type='TimmBackbone', model_name='resnet18',
                                             pretrained=False),
                               head=dict(type='_TestFixedDetHead'),
                               backbone_checkpoint=str(path)))
    name = next(k for k, v in source.backbone.state_dict().items() if v.is_floating_point())
    assert not torch.equal(target.backbone.state_dict()[name], source.backbone.state_dict()[name])
    target.init_weights()
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[k], v), k


# ------------------------------------------------------------------ through the Runner
@pytest.mark.slow
def test_runner_trains_and_evaluates_on_the_coco_stand_in(coco_root, tmp_path):
    from densevit.engine import build_runner

    train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_mask=True),
                      dict(type='RandomFlip', prob=0.5),
                      dict(type='Resize', scale=(96, 96), keep_ratio=True),
                      dict(type='PackDetInputs')]
    test_pipeline = [dict(type='LoadImageFromFile'),
                     dict(type='Resize', scale=(96, 96), keep_ratio=True),
                     dict(type='LoadAnnotations', with_mask=True), dict(type='PackDetInputs')]

    def loader(split, pipeline, test_mode):
        return dict(batch_size=2, num_workers=0, persistent_workers=False,
                    sampler=dict(type='DefaultSampler', shuffle=not test_mode),
                    dataset=dict(type='CocoDataset', data_root=coco_root,
                                 ann_file=f'annotations/instances_{split}2017.json',
                                 data_prefix=dict(img=f'{split}2017/'), with_mask=True,
                                 test_mode=test_mode, pipeline=pipeline))

    cfg = Config(dict(
        work_dir=str(tmp_path / 'work'),
        model=dict(type='Detector',
                   backbone=dict(type='TimmBackbone', model_name='resnet18', pretrained=False),
                   neck=dict(type='ChannelMapper', out_channels=64),
                   head=dict(type='_TestFixedDetHead', num_classes=80, with_masks=True)),
        train_dataloader=loader('train', train_pipeline, False),
        val_dataloader=loader('val', test_pipeline, True),
        val_evaluator=dict(type='CocoMetric',
                           ann_file=osp.join(coco_root, 'annotations/instances_val2017.json'),
                           metric=['bbox', 'segm'], classwise=False),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2),
        val_cfg=dict(type='ValLoop'),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-4)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1000),
                           logger=dict(type='LoggerHook', interval=1)),
        log_processor=dict(by_epoch=False),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=0),
        log_level='WARNING'))
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 2
    metrics = runner.val_loop.run()
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_AR_100'):
        assert -1.0 <= metrics[key] <= 1.0, metrics
