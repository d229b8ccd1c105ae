"""Semantic-segmentation losses, the pixel-accuracy metric logged with them, OHEM pixel sampling,
and ``SegCriterion``, which turns a head's logits and the data samples into the loss dict.

All losses take ``(logits (B, K, H, W), target (B, H, W) long, weight (B, H, W) | None)`` and
return a scalar; pixels whose target equals ``ignore_index`` never contribute.
torch.nn.functional.cross_entropy gives the per-pixel terms; what we add is the averaging over
non-ignored (or OHEM-kept) pixels and the loss naming the training loop logs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS

__all__ = ['CrossEntropyLoss', 'DiceLoss', 'OHEMPixelSampler', 'SegCriterion', 'accuracy',
           'stack_gt_sem_seg']


@MODELS.register_module()
class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy over pixels.

    Args:
        loss_weight: factor applied to the loss.
        class_weight: per-class weights (length K), or None.
        ignore_index: target value excluded from the loss.
        avg_non_ignore: divide by the number of non-ignored pixels (times their pixel weights when
            a sampler supplies them); False divides by all pixels, ignored ones included.
        loss_name: key of this loss in the head's loss dict (must start with 'loss_').
    """

    def __init__(self, *, loss_weight: float = 1.0, class_weight: Sequence[float] | None = None,
                 ignore_index: int = 255, avg_non_ignore: bool = True,
                 loss_name: str = 'loss_ce') -> None:
        super().__init__()
        if not loss_name.startswith('loss_'):
            raise ValueError(f"loss_name must start with 'loss_' (got {loss_name!r})")
        self.loss_weight = loss_weight
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.loss_name = loss_name
        self.register_buffer('class_weight', None if class_weight is None
                             else torch.as_tensor(class_weight, dtype=torch.float),
                             persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        if self.class_weight is not None and self.class_weight.numel() != logits.shape[1]:
            raise ValueError(f'class_weight has {self.class_weight.numel()} entries, the logits '
                             f'have {logits.shape[1]} classes')
        per_pixel = F.cross_entropy(logits.float(), target, weight=self.class_weight,
                                    ignore_index=self.ignore_index, reduction='none')  # (B, H, W)
        valid = (target != self.ignore_index).float()
        if weight is not None:
            per_pixel = per_pixel * weight
            valid = valid * weight
        denom = valid.sum() if self.avg_non_ignore else torch.tensor(float(target.numel()))
        return self.loss_weight * per_pixel.sum() / denom.clamp(min=1.0)


@MODELS.register_module()
class DiceLoss(nn.Module):
    """Softmax dice loss, 1 - mean over classes of 2|P∩T| / (|P| + |T|), over non-ignored pixels.

    Args:
        loss_weight: factor applied to the loss.
        smooth: added to numerator and denominator (keeps absent classes at dice 1).
        ignore_index: target value excluded from the loss.
        loss_name: key of this loss in the head's loss dict.
    """

    def __init__(self, *, loss_weight: float = 1.0, smooth: float = 1.0, ignore_index: int = 255,
                 loss_name: str = 'loss_dice') -> None:
        super().__init__()
        if not loss_name.startswith('loss_'):
            raise ValueError(f"loss_name must start with 'loss_' (got {loss_name!r})")
        self.loss_weight = loss_weight
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.loss_name = loss_name

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).float()  # (B, H, W)
        if weight is not None:
            valid = valid * weight
        prob = logits.float().softmax(dim=1) * valid[:, None]
        # (B, H, W) -> (B, H, W, K) -> (B, K, H, W)
        onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2)
        onehot = onehot.float() * valid[:, None]
        inter = (prob * onehot).sum(dim=(0, 2, 3))
        union = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        dice = (2 * inter + self.smooth) / (union + self.smooth)
        return self.loss_weight * (1 - dice.mean())


def accuracy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Percentage of non-ignored pixels whose argmax class equals the target (0 if none)."""
    valid = target != ignore_index
    correct = (logits.argmax(dim=1) == target) & valid
    return correct.sum().float() * 100.0 / valid.sum().clamp(min=1).float()


@MODELS.register_module()
class OHEMPixelSampler(nn.Module):
    """Online hard example mining over pixels: returns a (B, H, W) 0/1 weight keeping the hard ones.

    With ``thresh``, a pixel is kept when the predicted probability of its gt class is below
    max(thresh, the min_kept-th smallest such probability); without it, the ``min_kept`` pixels
    with the largest cross-entropy are kept. Either way at least ``min(min_kept, #valid)`` pixels
    are kept. (mmseg has this as a sampler; mmengine and torch do not.)

    Args:
        thresh: probability threshold, or None for loss ranking.
        min_kept: minimum number of pixels kept per batch.
        ignore_index: target value never kept.
    """

    def __init__(self, *, thresh: float | None = None, min_kept: int = 100000,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if min_kept < 1:
            raise ValueError(f'min_kept must be >= 1 (got {min_kept})')
        self.thresh = thresh
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index  # (B, H, W)
        weight = torch.zeros_like(target, dtype=torch.float)
        num_valid = int(valid.sum())
        if num_valid == 0:
            return weight
        keep = min(self.min_kept, num_valid)
        safe_target = target.clone()
        safe_target[~valid] = 0
        if self.thresh is not None:
            prob = logits.float().softmax(dim=1).gather(1, safe_target[:, None])[:, 0]
            kth = prob[valid].sort().values[keep - 1]
            threshold = max(float(kth), self.thresh)
            weight[valid & (prob <= threshold)] = 1.0
        else:
            loss = F.cross_entropy(logits.float(), safe_target, reduction='none')
            loss[~valid] = -1.0
            # (B, H, W) -> (B*H*W,)
            idx = loss.flatten().topk(keep).indices
            weight.view(-1)[idx] = 1.0
        return weight


def stack_gt_sem_seg(data_samples: Sequence) -> torch.Tensor:
    """The samples' ``gt_sem_seg`` (1, H, W) maps stacked to (B, H, W) long; they must share a size
    (the data preprocessor pads them in training)."""
    maps = []
    for i, sample in enumerate(data_samples):
        if 'gt_sem_seg' not in sample:
            raise KeyError(f'data_samples[{i}] has no gt_sem_seg (needed for the loss)')
        maps.append(sample.gt_sem_seg.data)
    sizes = {tuple(m.shape[-2:]) for m in maps}
    if len(sizes) != 1:
        raise ValueError(f'gt_sem_seg sizes differ within the batch: {sorted(sizes)}; pad them '
                         'to one size (SegDataPreprocessor does in training)')
    return torch.stack([m.reshape(m.shape[-2:]) for m in maps]).long()  # (1, H, W) -> (B, H, W)


class SegCriterion(nn.Module):
    """What every segmentation head's ``loss`` does: resize the logits bilinearly to the gt size,
    optionally weight pixels with a sampler, sum the configured losses and log pixel accuracy.

    Args:
        loss_decode: a loss config or a list of them (built with MODELS); losses with the same
            ``loss_name`` are summed into one entry.
        sampler: pixel sampler config (e.g. ``dict(type='OHEMPixelSampler', min_kept=100000)``).
        ignore_index: label ignored by the accuracy (and by the sampler when it is built here).
        align_corners: passed to the bilinear resize.
    """

    def __init__(self, *, loss_decode: dict | list[dict], sampler: dict | None = None,
                 ignore_index: int = 255, align_corners: bool = False) -> None:
        super().__init__()
        configs = [loss_decode] if isinstance(loss_decode, dict) else list(loss_decode)
        if not configs:
            raise ValueError('loss_decode is empty; give at least one loss config')
        self.losses = nn.ModuleList(MODELS.build(cfg) for cfg in configs)
        self.sampler = None if sampler is None else MODELS.build(
            sampler, default_args=dict(ignore_index=ignore_index))
        self.ignore_index = ignore_index
        self.align_corners = align_corners

    def forward(self, logits: torch.Tensor, data_samples: Sequence) -> dict[str, torch.Tensor]:
        target = stack_gt_sem_seg(data_samples).to(logits.device)
        logits = F.interpolate(logits, size=target.shape[-2:], mode='bilinear',
                               align_corners=self.align_corners)
        weight = None if self.sampler is None else self.sampler(logits, target)
        out: dict[str, torch.Tensor] = {}
        for loss in self.losses:
            value = loss(logits, target, weight)
            out[loss.loss_name] = out[loss.loss_name] + value if loss.loss_name in out else value
        out['acc_seg'] = accuracy(logits.detach(), target, self.ignore_index)
        return out
