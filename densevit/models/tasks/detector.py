"""Detector: backbone (+ neck) + a DETR-family set-prediction head, for boxes and instance masks.

Call graph (mmengine calls ``forward`` with mode 'loss', 'predict' or 'tensor'):

    loss(inputs, data_samples)
      ├─ targets(data_samples, (Hp, Wp))        per image: labels, boxes cxcywh / img_shape, masks
      ├─ extract_feat(inputs)                   backbone -> neck: {'s8': (B, C, H/8, W/8), ...}
      ├─ padding_mask(data_samples, (Hp, Wp))   (B, Hp, Wp) bool, True outside img_shape
      ├─ head.loss(features, padding_mask, targets) -> {'loss_cls': ..., 'd0.loss_giou': ...}
      └─ check_finite_losses(losses, ...)       FloatingPointError before any optimizer step
    predict(inputs, data_samples)
      ├─ extract_feat, padding_mask
      ├─ head.predict(features, padding_mask) -> P: logits, boxes[, masks]
      └─ postprocess(P, data_samples, (Hp, Wp)) -> pred_instances at ori_shape, per image
    _forward(inputs, data_samples)              mode='tensor': head(features, padding_mask) -> P

The head contract (``targets``, ``padding_mask``, the prediction dict P) is the one the DETR heads
in ``densevit/models/heads/detr`` follow: boxes are (cx, cy, w, h) in [0, 1] of the *unpadded*
image, masks are logits at stride 4 of the padded batch.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torchvision.ops import box_convert

from ...checkpoint.loading import load_backbone_checkpoint
from ...registry import MODELS
from ...structures import DataSample, InstanceData
from .det_data_preprocessor import pad_masks, padding_mask
from .finite import check_finite_losses, describe_sample
from .neck_chain import apply_neck, build_neck

__all__ = ['Detector']

logger = logging.getLogger('densevit')

_TEST_CFG_DEFAULTS = dict(max_per_img=100, mask_thr_binary=0.5)
_CLASS_LOSSES = ('focal', 'ce')


@MODELS.register_module()
class Detector(BaseModel):
    """Set-prediction detector (DETR, Deformable DETR, DINO, Mask DINO style heads).

    Post-processing (``predict``): with a ``'focal'`` head the ``max_per_img`` best (query, class)
    pairs of the sigmoid scores over all Q x C are kept, as Deformable DETR and DINO do (a query
    may appear with several classes); with a ``'ce'`` head each query gets its best class of the
    softmax without the no-object column, and the ``max_per_img`` best queries are kept. Boxes go
    from normalised cxcywh to xyxy pixels of ``img_shape``, are clipped to it, mirrored back if
    the pipeline flipped the image, divided by ``scale_factor`` (w, h) and clipped to
    ``ori_shape``. Mask logits (stride 4 of the padded batch) are upsampled x4, cropped to
    ``img_shape``, un-flipped, resized to ``ori_shape`` (bilinear) and thresholded.

    Args:
        backbone: backbone config (MODELS).
        head: detection head config; built with ``input_shapes`` of the neck (or backbone).
        neck: optional neck config, built with ``input_shapes=backbone.out_features``, or a list
            of them applied in turn, each built with the ``out_features`` of the one before.
        data_preprocessor: ``DetDataPreprocessor`` config; default: ImageNet mean/std, padded to a
            multiple of the coarsest stride among the backbone's and neck's maps.
        test_cfg: ``max_per_img`` (detections kept per image, default 100) and
            ``mask_thr_binary`` (a *probability*: a pixel belongs to a mask where
            sigmoid(logit) > it, default 0.5, i.e. logit > 0).
        backbone_checkpoint: path of a converted backbone state dict loaded at ``init_weights``,
            completely or not at all (``load_backbone_checkpoint``: ``backbone.*`` / ``neck.*``
            keys of whole-model converters go to the backbone / neck).
        init_cfg: mmengine init config.
    """

    # raise FloatingPointError on a NaN/inf loss; the engine turns it off when the optim wrapper
    # skips such steps instead (``skip_nonfinite``)
    check_finite_loss = True

    def __init__(self, *, backbone: dict, head: dict, neck: dict | list[dict] | None = None,
                 data_preprocessor: dict | None = None, test_cfg: dict | None = None,
                 backbone_checkpoint: str | None = None, init_cfg: dict | None = None) -> None:
        built_backbone = MODELS.build(backbone)
        built_neck, shapes, strides = build_neck(neck, built_backbone.out_features)
        if data_preprocessor is None:
            data_preprocessor = dict(type='DetDataPreprocessor', size_divisor=max(strides))
        super().__init__(data_preprocessor=MODELS.build(data_preprocessor), init_cfg=init_cfg)
        self.backbone = built_backbone
        self.neck = built_neck
        self.head = MODELS.build(head, default_args=dict(input_shapes=shapes))
        for attr in ('class_loss', 'with_masks', 'num_classes'):
            if not hasattr(self.head, attr):
                raise AttributeError(f'detection head {type(self.head).__name__} lacks the '
                                     f'attribute {attr!r} of the head API (class_loss, '
                                     'with_masks, num_classes)')
        if self.head.class_loss not in _CLASS_LOSSES:
            raise ValueError(f'head {type(self.head).__name__} has class_loss '
                             f'{self.head.class_loss!r}; expected one of {_CLASS_LOSSES}')
        self.test_cfg = self._check_test_cfg(test_cfg or {})
        self.backbone_checkpoint = backbone_checkpoint
        self.num_classes = self.head.num_classes

    @staticmethod
    def _check_test_cfg(cfg: Mapping) -> dict:
        unknown = set(cfg) - set(_TEST_CFG_DEFAULTS)
        if unknown:
            raise KeyError(f'Detector test_cfg has unknown keys {sorted(unknown)}; allowed: '
                           f'{sorted(_TEST_CFG_DEFAULTS)}')
        cfg = {**_TEST_CFG_DEFAULTS, **cfg}
        if int(cfg['max_per_img']) != cfg['max_per_img'] or cfg['max_per_img'] < 1:
            raise ValueError(f'test_cfg max_per_img must be a positive integer; got '
                             f'{cfg["max_per_img"]!r}')
        if not 0.0 <= cfg['mask_thr_binary'] <= 1.0:
            raise ValueError(f'test_cfg mask_thr_binary is a probability in [0, 1]; got '
                             f'{cfg["mask_thr_binary"]!r}')
        cfg['max_per_img'] = int(cfg['max_per_img'])
        return cfg

    def init_weights(self) -> None:
        super().init_weights()
        if self.backbone_checkpoint is not None:
            load_backbone_checkpoint(self.backbone_checkpoint, self.backbone, self.neck)

    # ---------------------------------------------------------------- features and targets
    def extract_feat(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return apply_neck(self.neck, self.backbone(inputs))

    def _padding_mask(self, inputs: torch.Tensor, data_samples: Sequence | None) -> torch.Tensor:
        return padding_mask(data_samples, tuple(inputs.shape[-2:]), batch_size=inputs.shape[0],
                            device=inputs.device)

    def targets(self, data_samples: Sequence, size: tuple[int, int],
                device: torch.device | str | None = None) -> list[dict]:
        """The head's training targets, one dict per image: ``labels`` (N,) int64, ``boxes``
        (N, 4) cxcywh normalised by ``img_shape`` and, for a mask head, ``masks`` (N, Hp, Wp)
        bool padded with zeros to the batch ``size``. A sample without ``gt_instances`` (or with
        none) gives empty tensors."""
        targets = []
        for sample in data_samples:
            h, w = sample.metainfo.get('img_shape', size)[:2]
            gt = sample.get('gt_instances')
            if gt is None or 'bboxes' not in gt:
                boxes = torch.zeros((0, 4), device=device)
                labels = torch.zeros((0,), dtype=torch.long, device=device)
            else:
                boxes, labels = gt.bboxes.float().reshape(-1, 4), gt.labels.long()
            scale = boxes.new_tensor([w, h, w, h])
            target = dict(labels=labels, boxes=box_convert(boxes, 'xyxy', 'cxcywh') / scale)
            if self.head.with_masks:
                if gt is not None and 'masks' in gt:
                    target['masks'] = pad_masks(gt.masks.bool(), size)
                elif len(labels):
                    raise ValueError(f'head {type(self.head).__name__} predicts masks but image '
                                     f'{describe_sample(sample)} has no gt_instances.masks; load '
                                     'them with LoadAnnotations(with_mask=True)')
                else:
                    target['masks'] = torch.zeros((0, *size), dtype=torch.bool,
                                                  device=boxes.device)
            targets.append(target)
        self._check_labels(targets, data_samples)
        return targets

    def _check_labels(self, targets: list[dict], data_samples: Sequence) -> None:
        """Labels outside [0, num_classes) would index past the head's classes (one sync)."""
        labels = torch.cat([t['labels'] for t in targets])
        if not len(labels) or bool(((labels >= 0) & (labels < self.num_classes)).all()):
            return
        for target, sample in zip(targets, data_samples):
            bad = target['labels'][(target['labels'] < 0) | (target['labels'] >= self.num_classes)]
            if len(bad):
                raise ValueError(f'image {describe_sample(sample)} has gt labels {bad.tolist()} '
                                 f'outside [0, {self.num_classes}) of the head (num_classes='
                                 f'{self.num_classes}); do the dataset classes match the head?')

    # ---------------------------------------------------------------- mmengine entry points
    def forward(self, inputs: torch.Tensor, data_samples: Sequence | None = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._forward(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor'; got {mode!r}")

    def _forward(self, inputs: torch.Tensor, data_samples: Sequence | None = None) -> dict:
        """The head's raw predictions P (logits, boxes[, masks, aux, ...]) without targets."""
        return self.head(self.extract_feat(inputs), self._padding_mask(inputs, data_samples))

    def loss(self, inputs: torch.Tensor, data_samples: Sequence) -> dict[str, torch.Tensor]:
        if data_samples is None:
            raise ValueError('Detector.loss needs data_samples with gt_instances')
        targets = self.targets(data_samples, tuple(inputs.shape[-2:]), inputs.device)
        features = self.extract_feat(inputs)
        losses = self.head.loss(features, self._padding_mask(inputs, data_samples), targets)
        if self.check_finite_loss:
            check_finite_losses(losses, data_samples)
        return losses

    def predict(self, inputs: torch.Tensor, data_samples: Sequence | None = None) -> list:
        preds = self.head.predict(self.extract_feat(inputs),
                                  self._padding_mask(inputs, data_samples))
        return self.postprocess(preds, data_samples, tuple(inputs.shape[-2:]))

    # ---------------------------------------------------------------- post-processing
    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image detections from (B, Q, C) or (B, Q, C + 1) logits: (scores, labels, query
        indices), each (B, K) with K = min(max_per_img, candidates), best first."""
        b, q, _ = logits.shape
        logits = logits.float()
        if self.head.class_loss == 'focal':
            # all (query, class) pairs compete, as Deformable DETR / DINO's PostProcess
            num_classes = logits.shape[-1]
            k = min(self.test_cfg['max_per_img'], q * num_classes)
            # (B, Q, C) -> (B, Q*C): flat index = query * C + class
            scores, flat = logits.sigmoid().flatten(1).topk(k, dim=1)
            return scores, flat % num_classes, flat // num_classes
        probs = logits.softmax(-1)[..., :-1]  # drop the no-object column
        scores, labels = probs.max(-1)
        k = min(self.test_cfg['max_per_img'], q)
        scores, queries = scores.topk(k, dim=1)
        return scores, labels.gather(1, queries), queries

    def postprocess(self, preds: Mapping[str, torch.Tensor], data_samples: Sequence | None,
                    size: tuple[int, int]) -> list:
        """Set ``pred_instances`` (bboxes (K, 4) xyxy, scores, labels[, masks (K, H, W) bool]) at
        ``ori_shape`` on each sample (made if ``data_samples`` is None). ``size`` = (Hp, Wp)."""
        if data_samples is None:
            data_samples = [DataSample(metainfo=dict(img_shape=size, ori_shape=size))
                            for _ in range(preds['logits'].shape[0])]
        scores, labels, queries = self.select(preds['logits'])
        # (B, Q, 4) -> (B, K, 4), the boxes of the selected queries
        boxes = preds['boxes'].gather(1, queries[..., None].expand(-1, -1, 4))
        boxes = box_convert(boxes.float(), 'cxcywh', 'xyxy')
        masks = preds.get('masks') if self.head.with_masks else None
        for i, sample in enumerate(data_samples):
            meta = sample.metainfo
            h, w = meta.get('img_shape', size)[:2]
            ori_h, ori_w = meta.get('ori_shape', (h, w))[:2]
            sx, sy = meta.get('scale_factor', (w / ori_w, h / ori_h))
            flip = _flip_dims(meta)
            bboxes = boxes[i] * boxes.new_tensor([w, h, w, h])
            bboxes = _clip(bboxes, h, w)
            if 'horizontal' in flip:
                bboxes = torch.stack([w - bboxes[:, 2], bboxes[:, 1], w - bboxes[:, 0],
                                      bboxes[:, 3]], dim=-1)
            if 'vertical' in flip:
                bboxes = torch.stack([bboxes[:, 0], h - bboxes[:, 3], bboxes[:, 2],
                                      h - bboxes[:, 1]], dim=-1)
            bboxes = _clip(bboxes / bboxes.new_tensor([sx, sy, sx, sy]), ori_h, ori_w)
            result = InstanceData()
            result.bboxes = bboxes
            result.scores = scores[i]
            result.labels = labels[i]
            if masks is not None:
                result.masks = self._masks(masks[i, queries[i]], (h, w), (ori_h, ori_w), flip)
            sample.pred_instances = result
        return list(data_samples)

    def _masks(self, logits: torch.Tensor, img_shape: tuple[int, int],
               ori_shape: tuple[int, int], flip: tuple[str, ...]) -> torch.Tensor:
        """(K, Hp/4, Wp/4) mask logits -> (K, ori_h, ori_w) bool masks."""
        k, h4, w4 = logits.shape
        if k == 0:
            return torch.zeros((0, *ori_shape), dtype=torch.bool, device=logits.device)
        # (K, h4, w4) -> (1, K, 4*h4, 4*w4): back to the padded input grid
        full = F.interpolate(logits[None].float(), size=(4 * h4, 4 * w4), mode='bilinear',
                             align_corners=False)
        full = full[..., :img_shape[0], :img_shape[1]]  # padding is at the bottom and right
        if flip:
            full = full.flip([-1 if d == 'horizontal' else -2 for d in flip])
        if tuple(ori_shape) != tuple(img_shape):
            full = F.interpolate(full, size=tuple(ori_shape), mode='bilinear',
                                 align_corners=False)
        return full[0].sigmoid() > self.test_cfg['mask_thr_binary']


def _clip(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Clip (K, 4) xyxy boxes to an image of (h, w)."""
    limits = boxes.new_tensor([w, h, w, h])
    return torch.minimum(boxes.clamp(min=0), limits)


def _flip_dims(meta: Mapping) -> tuple[str, ...]:
    """Which axes a pipeline flip mirrored: () or some of ('horizontal', 'vertical')."""
    if not meta.get('flip', False):
        return ()
    direction = meta.get('flip_direction') or 'horizontal'
    dims = {'horizontal': ('horizontal',), 'vertical': ('vertical',),
            'diagonal': ('horizontal', 'vertical')}.get(direction)
    if dims is None:
        raise ValueError(f'unknown flip_direction {direction!r}; expected horizontal, vertical '
                         'or diagonal')
    return dims
