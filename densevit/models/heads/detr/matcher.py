"""HungarianMatcher: the one-to-one assignment of queries to targets that DETR-style losses use.

One cost matrix is computed for the whole batch (every query against every target of the batch),
moved to the CPU once, and each image's block is handed to scipy's ``linear_sum_assignment``
(DETR ``models/matcher.py``). The class cost is focal (Deformable DETR, DINO, Mask DINO) or
-probability (DETR, Mask2Former); box costs are L1 and -GIoU; mask costs (sigmoid cross-entropy and
dice on the same random points for every query and target, Mask2Former / Mask DINO) are added when
their weights are positive and the outputs carry masks.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from ....registry import MODELS
from .point_sampling import point_sample

__all__ = ['HungarianMatcher', 'focal_class_cost', 'mask_ce_cost', 'mask_dice_cost']

CLASS_COSTS = ('focal', 'ce')


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, *, alpha: float,
                     gamma: float) -> torch.Tensor:
    """Focal-loss classification cost, as Deformable DETR / DINO match with: the focal loss of
    predicting ``label`` minus the focal loss of predicting not-``label``.

    Args:
        logits: (N, K) class logits.
        labels: (M,) target classes.

    Returns:
        (N, M) cost.
    """
    prob = logits.sigmoid()
    # the 1e-8 keeps log finite for saturated probabilities, as in the official code
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    neg = (1 - alpha) * prob ** gamma * -(1 - prob + 1e-8).log()
    return pos[:, labels] - neg[:, labels]


def mask_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy over points between every predicted and every target mask.

    Args:
        logits: (N, P) point logits.
        targets: (M, P) point targets in [0, 1].

    Returns:
        (N, M) cost.
    """
    pos = F.softplus(-logits)  # BCE of each point against target 1
    neg = F.softplus(logits)  # ... against target 0
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def mask_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft dice (+1 smoothing) between every predicted and every target mask.

    Args:
        logits: (N, P) point logits.
        targets: (M, P) point targets in [0, 1].

    Returns:
        (N, M) cost.
    """
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@MODELS.register_module()
class HungarianMatcher(nn.Module):
    """Optimal one-to-one matching of queries to targets, per image, under a weighted cost.

    Args:
        class_cost: 'focal' (sigmoid logits, (B, Q, K)) or 'ce' (softmax logits, (B, Q, K + 1)
            with no-object last; the cost is -prob of the target class).
        cost_class: weight of the class cost.
        cost_bbox: weight of the L1 distance between (cx, cy, w, h) boxes.
        cost_giou: weight of -GIoU.
        cost_mask: weight of the mean sigmoid cross-entropy over the sampled points.
        cost_dice: weight of the dice cost over the sampled points.
        focal_alpha: alpha of the focal class cost.
        focal_gamma: gamma of the focal class cost.
        num_points: points sampled (once per call, shared by all queries and targets) for the
            mask costs.
    """

    def __init__(self, *, class_cost: str = 'focal', cost_class: float = 2.0,
                 cost_bbox: float = 5.0, cost_giou: float = 2.0, cost_mask: float = 0.0,
                 cost_dice: float = 0.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 num_points: int = 12544) -> None:
        super().__init__()
        if class_cost not in CLASS_COSTS:
            raise ValueError(f'class_cost must be one of {CLASS_COSTS} (got {class_cost!r})')
        weights = dict(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou,
                       cost_mask=cost_mask, cost_dice=cost_dice)
        negative = {name: w for name, w in weights.items() if w < 0}
        if negative:
            raise ValueError(f'cost weights must be >= 0 (got {negative})')
        if not any(weights.values()):
            raise ValueError('all cost weights are 0; give at least one a positive weight')
        if num_points < 1:
            raise ValueError(f'num_points must be >= 1 (got {num_points})')
        self.class_cost = class_cost
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, torch.Tensor],
                targets: Sequence[Mapping[str, torch.Tensor]]
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: logits (B, Q, K), boxes (B, Q, 4) cxcywh, optionally masks (B, Q, h, w) logits.
            targets: per image labels (N_i,), boxes (N_i, 4) cxcywh, optionally masks (N_i, H, W).

        Returns:
            Per image (query_idx, target_idx), int64 on the CPU, each of length min(Q, N_i),
            sorted by query index.
        """
        sizes = [len(t['labels']) for t in targets]
        # (B, Q, T) -> CPU, once for the whole batch
        cost = self.cost_matrix(outputs, targets).cpu()
        matches = []
        for i, block in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                matches.append(_empty_match())
                continue
            image_cost = block[i]  # (Q, N_i): image i's queries against its own targets
            if not torch.isfinite(image_cost).all():
                raise ValueError(
                    f'matching cost of image {i} has NaN or inf entries; check its predictions '
                    'and its target boxes (zero-area targets make GIoU undefined)')
            query_idx, target_idx = linear_sum_assignment(image_cost.numpy())
            matches.append((torch.as_tensor(query_idx, dtype=torch.int64),
                            torch.as_tensor(target_idx, dtype=torch.int64)))
        return matches

    @torch.no_grad()
    def cost_matrix(self, outputs: Mapping[str, torch.Tensor],
                    targets: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Weighted cost of every query of the batch against every target of the batch.

        Args:
            outputs, targets: as for ``forward``.

        Returns:
            (B, Q, T) on the outputs' device, T = all targets of the batch in image order; only
            image i's block (queries of i, targets of i) takes part in its matching, and the
            mask costs are computed for those blocks only.
        """
        logits, boxes = outputs['logits'], outputs['boxes']
        batch_size, num_queries = logits.shape[:2]
        if len(targets) != batch_size:
            raise ValueError(f'got {len(targets)} targets for a batch of {batch_size} images')
        if sum(len(t['labels']) for t in targets) == 0:
            return logits.new_zeros(batch_size, num_queries, 0, dtype=torch.float)

        # (B, Q, K) -> (B*Q, K); (B, Q, 4) -> (B*Q, 4)
        logits = logits.flatten(0, 1).float()
        boxes = boxes.flatten(0, 1).float()
        labels = torch.cat([t['labels'] for t in targets]).to(logits.device)  # (T,)
        tgt_boxes = torch.cat([t['boxes'] for t in targets]).to(boxes)  # (T, 4)

        num_labels = logits.shape[-1] - (self.class_cost == 'ce')  # 'ce' has no-object last
        low, high = torch.stack(labels.aminmax()).tolist()
        if low < 0 or high >= num_labels:
            raise ValueError(f'target labels must be in [0, {num_labels}) for logits of width '
                             f'{logits.shape[-1]} and class_cost={self.class_cost!r} (got '
                             f'{low}..{high})')
        cost = logits.new_zeros(len(logits), len(labels))  # (B*Q, T)
        if self.cost_class and self.class_cost == 'focal':
            cost = cost + self.cost_class * focal_class_cost(
                logits, labels, alpha=self.focal_alpha, gamma=self.focal_gamma)
        elif self.cost_class:
            cost = cost - self.cost_class * logits.softmax(-1)[:, labels]
        if self.cost_bbox:
            cost = cost + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
        if self.cost_giou:
            giou = generalized_box_iou(box_convert(boxes, 'cxcywh', 'xyxy'),
                                       box_convert(tgt_boxes, 'cxcywh', 'xyxy'))
            cost = cost - self.cost_giou * giou
        if (self.cost_mask or self.cost_dice) and outputs.get('masks') is not None:
            cost = cost + self._mask_cost(outputs['masks'], targets)
        # (B*Q, T) -> (B, Q, T)
        return cost.view(batch_size, num_queries, -1)

    def _mask_cost(self, pred_masks: torch.Tensor,
                   targets: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Weighted mask cost (B*Q, T) on one set of random points shared by all masks; only the
        blocks of each image's queries against its own targets are filled (the rest is 0)."""
        missing = [i for i, t in enumerate(targets) if len(t['labels']) and 'masks' not in t]
        if missing:
            raise KeyError(f'targets of images {missing} have no masks, but the outputs carry '
                           'masks and the mask costs are enabled')
        batch_size, num_queries = pred_masks.shape[:2]
        coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)  # (1, P, 2)
        # (B, Q, h, w) sampled at (B, P, 2) -> (B, Q, P)
        pred_points = point_sample(pred_masks, coords.expand(batch_size, -1, -1)).float()
        sizes = [len(t['labels']) for t in targets]
        cost = pred_points.new_zeros(batch_size * num_queries, sum(sizes))
        # Only image i's block (its queries, its targets) takes part in its matching, so over
        # thousands of points the costs are computed per image, not for the whole batch.
        start = 0
        for i, (target, size) in enumerate(zip(targets, sizes)):
            if not size:
                continue
            # (N_i, H, W) masks as the channels of one map: (1, N_i, H, W) -> (N_i, P)
            tgt_points = point_sample(
                target['masks'].to(pred_masks.device, torch.float)[None], coords)[0]
            block = cost[i * num_queries:(i + 1) * num_queries, start:start + size]
            # the matmuls over thousands of points stay in float32 under mixed precision
            with torch.autocast(pred_points.device.type, enabled=False):
                if self.cost_mask:
                    block += self.cost_mask * mask_ce_cost(pred_points[i], tgt_points)
                if self.cost_dice:
                    block += self.cost_dice * mask_dice_cost(pred_points[i], tgt_points)
            start += size
        return cost


def _empty_match() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
