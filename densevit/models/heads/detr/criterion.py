"""SetCriterion: the set-prediction losses of the DETR family, from a head's predictions and the
targets to a dict of weighted losses.

For the final decoder layer, every auxiliary layer (``d{i}.``) and the two-stage encoder
proposals (``enc.``), queries are matched to targets by the Hungarian matcher; the denoising
queries (``dn.``, ``dn.d{i}.``) are matched to the targets they were made from. Matched queries
learn their target's class, box (L1 + GIoU) and, when the head predicts masks, mask (sigmoid
cross-entropy + dice on PointRend-sampled points); every other query learns no-object.

Normalisation follows the official code: box, mask and focal class losses are summed and divided
by the number of target boxes averaged over processes (DETR, Deformable DETR, DINO; times the
number of denoising groups for the denoising queries); softmax cross-entropy is the class-weighted
mean over queries with DETR's no-object weight.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from ....registry import MODELS
from .denoising import DenoisingMeta, denoising_match_indices
from .point_sampling import point_sample, uncertain_point_coords

__all__ = ['SetCriterion', 'average_num_boxes', 'build_set_criterion']

CLASS_LOSSES = ('focal', 'ce')
DEFAULT_WEIGHTS = dict(cls=1.0, bbox=5.0, giou=2.0, mask=5.0, dice=5.0)

Targets = Sequence[Mapping[str, torch.Tensor]]
Indices = Sequence[tuple[torch.Tensor, torch.Tensor]]


def average_num_boxes(targets: Targets, device: torch.device) -> float:
    """Target boxes per process: the batch's count summed over processes (when torch.distributed
    is initialised) and divided by the world size, at least 1."""
    num = torch.tensor([float(sum(len(t['labels']) for t in targets))], device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        world_size = dist.get_world_size()
    return max(num.item() / world_size, 1.0)


@MODELS.register_module()
class SetCriterion(nn.Module):
    """Hungarian-matched set losses for DETR, Deformable DETR, DINO and Mask DINO style heads.

    Args:
        num_classes: object classes (no-object excluded).
        matcher: HungarianMatcher config (built with MODELS) or module.
        class_loss: 'focal' (sigmoid focal over (B, Q, num_classes) logits, normalised by the
            number of boxes) or 'ce' (softmax cross-entropy over (B, Q, num_classes + 1) logits,
            no-object last, weighted by ``no_object_weight``).
        weights: loss weights by name (cls, bbox, giou, mask, dice); missing names keep the
            defaults cls=1, bbox=5, giou=2, mask=5, dice=5.
        focal_alpha: alpha of the focal loss.
        focal_gamma: gamma of the focal loss.
        no_object_weight: class weight of no-object in the cross-entropy (DETR's eos_coef).
        enc_class_agnostic: match and classify the encoder proposals with every target labelled
            0 (Deformable DETR's two-stage); False uses the real labels (DINO).
        num_points: points per mask for the mask losses.
        oversample_ratio: candidate points per kept point in the uncertainty sampling.
        importance_sample_ratio: fraction of the points chosen by uncertainty (the rest uniform).
    """

    def __init__(self, *, num_classes: int, matcher: dict | nn.Module, class_loss: str = 'focal',
                 weights: Mapping[str, float] | None = None, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, no_object_weight: float = 0.1,
                 enc_class_agnostic: bool = False, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1 (got {num_classes})')
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f'class_loss must be one of {CLASS_LOSSES} (got {class_loss!r})')
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ValueError(f'unknown loss weights {unknown}; known: {sorted(DEFAULT_WEIGHTS)}')
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1 or num_points < 1:
            raise ValueError('need num_points >= 1, oversample_ratio >= 1 and 0 <= '
                             f'importance_sample_ratio <= 1 (got {num_points}, '
                             f'{oversample_ratio}, {importance_sample_ratio})')
        self.num_classes = num_classes
        self.matcher = matcher if isinstance(matcher, nn.Module) else MODELS.build(matcher)
        self.class_loss = class_loss
        self.weights = {**DEFAULT_WEIGHTS, **weights}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.no_object_weight = no_object_weight
        self.enc_class_agnostic = enc_class_agnostic
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def forward(self, outputs: Mapping, targets: Targets) -> dict[str, torch.Tensor]:
        """Weighted losses of a head's predictions.

        Args:
            outputs: logits (B, Q, K), boxes (B, Q, 4) cxcywh, optionally masks (B, Q, Hp/4, Wp/4);
                optionally aux (list of such dicts, decoder layers 0..L-2), enc (such a dict) and
                dn (such a dict with aux and meta: DenoisingMeta).
            targets: per image labels (N_i,), boxes (N_i, 4) cxcywh, masks (N_i, Hp, Wp) when the
                outputs carry masks.

        Returns:
            loss_cls, loss_bbox, loss_giou[, loss_mask, loss_dice], the same prefixed by
            'd{i}.', 'enc.', 'dn.' and 'dn.d{i}.' for what the outputs hold.
        """
        logits = outputs['logits']
        if len(targets) != logits.shape[0]:
            raise ValueError(f'got {len(targets)} targets for a batch of {logits.shape[0]} images')
        expected = self.num_classes + (self.class_loss == 'ce')
        if logits.shape[-1] != expected:
            raise ValueError(f'class_loss={self.class_loss!r} with num_classes={self.num_classes} '
                             f'needs logits of width {expected} (got {logits.shape[-1]})')
        num_boxes = average_num_boxes(targets, logits.device)

        losses = self._layer_losses(outputs, targets, self.matcher(outputs, targets), num_boxes)
        for i, aux in enumerate(outputs.get('aux') or ()):
            layer = self._layer_losses(aux, targets, self.matcher(aux, targets), num_boxes)
            losses.update({f'd{i}.{k}': v for k, v in layer.items()})
        if outputs.get('enc') is not None:
            enc_targets = targets
            if self.enc_class_agnostic:
                enc_targets = [{**t, 'labels': torch.zeros_like(t['labels'])} for t in targets]
            layer = self._layer_losses(outputs['enc'], enc_targets,
                                       self.matcher(outputs['enc'], enc_targets), num_boxes)
            losses.update({f'enc.{k}': v for k, v in layer.items()})
        if outputs.get('dn') is not None:
            losses.update(self._denoising_losses(outputs['dn'], targets, num_boxes))
        return losses

    def _denoising_losses(self, dn: Mapping, targets: Targets,
                          num_boxes: float) -> dict[str, torch.Tensor]:
        meta = dn['meta']
        if not isinstance(meta, DenoisingMeta):
            raise TypeError(f"outputs['dn']['meta'] must be a DenoisingMeta (got {type(meta)})")
        if dn['logits'].shape[1] != meta.num_dn_queries:
            raise ValueError(f"outputs['dn'] has {dn['logits'].shape[1]} queries, its meta says "
                             f'{meta.num_dn_queries}')
        indices = denoising_match_indices(meta, targets)
        # every group reconstructs every box: DINO divides by num_boxes * num_groups
        num_dn_boxes = num_boxes * meta.num_groups
        losses = {f'dn.{k}': v for k, v in
                  self._layer_losses(dn, targets, indices, num_dn_boxes).items()}
        for i, aux in enumerate(dn.get('aux') or ()):
            layer = self._layer_losses(aux, targets, indices, num_dn_boxes)
            losses.update({f'dn.d{i}.{k}': v for k, v in layer.items()})
        return losses

    def _layer_losses(self, outputs: Mapping, targets: Targets, indices: Indices,
                      num_boxes: float) -> dict[str, torch.Tensor]:
        """Weighted losses of one set of predictions under one matching."""
        losses = {'loss_cls': self.loss_labels(outputs, targets, indices, num_boxes)}
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        if outputs.get('masks') is not None:
            losses.update(self.loss_masks(outputs, targets, indices, num_boxes))
        return {name: self.weights[_WEIGHT_OF[name]] * value for name, value in losses.items()}

    def loss_labels(self, outputs: Mapping, targets: Targets, indices: Indices,
                    num_boxes: float) -> torch.Tensor:
        """Classification loss (unweighted): matched queries learn their target's class, the
        others no-object (the last column for 'ce', all-zero targets for 'focal')."""
        logits = outputs['logits'].float()  # (B, Q, K)
        no_object = logits.shape[-1] - (self.class_loss == 'ce')  # K for focal, K - 1 for ce
        batch_idx, query_idx = _query_permutation(indices, logits.device)
        classes = torch.full(logits.shape[:2], no_object, dtype=torch.long, device=logits.device)
        classes[batch_idx, query_idx] = _matched(targets, indices, 'labels', logits.device)
        if self.class_loss == 'ce':
            class_weight = logits.new_ones(logits.shape[-1])
            class_weight[-1] = self.no_object_weight
            # (B, Q, K) -> (B, K, Q) as cross_entropy wants classes second
            return F.cross_entropy(logits.transpose(1, 2), classes, weight=class_weight)
        # (B, Q) -> (B, Q, K + 1) one-hot, dropping the no-object column
        onehot = F.one_hot(classes, no_object + 1)[..., :-1].to(logits.dtype)
        loss = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                  reduction='sum')
        # = DINO's loss.mean(1).sum() / num_boxes * num_queries
        return loss / num_boxes

    def loss_boxes(self, outputs: Mapping, targets: Targets, indices: Indices,
                   num_boxes: float) -> dict[str, torch.Tensor]:
        """L1 and GIoU losses (unweighted) of the matched boxes; with no match both are 0 but
        still depend on the boxes, so every parameter takes part in the backward pass."""
        boxes = outputs['boxes']
        batch_idx, query_idx = _query_permutation(indices, boxes.device)
        if len(batch_idx) == 0:
            zero = boxes.sum() * 0.0
            return {'loss_bbox': zero, 'loss_giou': zero}
        pred = boxes[batch_idx, query_idx].float()  # (M, 4)
        tgt = _matched(targets, indices, 'boxes', boxes.device).float()  # (M, 4)
        loss_bbox = F.l1_loss(pred, tgt, reduction='sum') / num_boxes
        # torchvision's loss form has eps in both divisions: zero-area boxes give no NaN
        loss_giou = generalized_box_iou_loss(box_convert(pred, 'cxcywh', 'xyxy'),
                                             box_convert(tgt, 'cxcywh', 'xyxy'), reduction='sum')
        return {'loss_bbox': loss_bbox, 'loss_giou': loss_giou / num_boxes}

    def loss_masks(self, outputs: Mapping, targets: Targets, indices: Indices,
                   num_boxes: float) -> dict[str, torch.Tensor]:
        """Sigmoid cross-entropy (mean over points) and dice losses (unweighted) of the matched
        masks, on points sampled where the predicted masks are uncertain (Mask2Former)."""
        masks = outputs['masks']  # (B, Q, h, w)
        batch_idx, query_idx = _query_permutation(indices, masks.device)
        if len(batch_idx) == 0:
            zero = masks.sum() * 0.0
            return {'loss_mask': zero, 'loss_dice': zero}
        missing = [i for i, t in enumerate(targets) if len(t['labels']) and 'masks' not in t]
        if missing:
            raise KeyError(f'targets of images {missing} have no masks, but the outputs carry '
                           'masks')
        pred = masks[batch_idx, query_idx][:, None].float()  # (M, 1, h, w)
        coords = uncertain_point_coords(pred, num_points=self.num_points,
                                        oversample_ratio=self.oversample_ratio,
                                        importance_sample_ratio=self.importance_sample_ratio)
        with torch.no_grad():
            # each image's matched gt masks at full padded resolution, sampled at the same
            # normalised points as the stride-4 predictions: (M, P)
            labels = []
            start = 0
            for t, (src, tgt) in zip(targets, indices):
                gt = t['masks'][tgt.to(t['masks'].device)].to(masks.device, torch.float)
                labels.append(point_sample(gt[:, None], coords[start:start + len(src)])[:, 0])
                start += len(src)
            labels = torch.cat(labels)
        logits = point_sample(pred, coords)[:, 0]  # (M, P)
        loss_mask = F.binary_cross_entropy_with_logits(logits, labels, reduction='none')
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * labels).sum(-1) + 1) / (prob.sum(-1) + labels.sum(-1) + 1)
        return {'loss_mask': loss_mask.mean(1).sum() / num_boxes,
                'loss_dice': dice.sum() / num_boxes}

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, class_loss={self.class_loss!r}, '
                f'weights={self.weights}, enc_class_agnostic={self.enc_class_agnostic}')


_WEIGHT_OF = dict(loss_cls='cls', loss_bbox='bbox', loss_giou='giou', loss_mask='mask',
                  loss_dice='dice')


def _query_permutation(indices: Indices, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, query index) of every matched pair, concatenated over images."""
    batch_idx = torch.cat([torch.full((len(src),), i, dtype=torch.long, device=device)
                           for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src.to(device) for src, _ in indices])
    return batch_idx, query_idx


def _matched(targets: Targets, indices: Indices, key: str, device: torch.device) -> torch.Tensor:
    """``targets[i][key]`` of every matched pair, in ``_query_permutation`` order."""
    return torch.cat([t[key][tgt.to(t[key].device)].to(device)
                      for t, (_, tgt) in zip(targets, indices)])


def build_set_criterion(cfg: Mapping, *, num_classes: int, class_loss: str, owner: str,
                        **defaults) -> nn.Module:
    """Build a head's criterion from config, filling in ``num_classes``, ``class_loss`` and
    ``defaults`` where the config does not set them, and refusing values that contradict the
    head."""
    cfg = dict(cfg)
    if cfg.get('class_loss', class_loss) != class_loss:
        raise ValueError(f"{owner} predicts {class_loss} class logits and needs criterion "
                         f"class_loss={class_loss!r}, got {cfg['class_loss']!r}")
    if cfg.get('num_classes', num_classes) != num_classes:
        raise ValueError(f"{owner} num_classes={num_classes} but its criterion has "
                         f"num_classes={cfg['num_classes']}")
    return MODELS.build(cfg, default_args=dict(defaults, num_classes=num_classes,
                                               class_loss=class_loss))
