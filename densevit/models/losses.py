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
           'pixel_accuracy', 'pixel_cross_entropy', 'stack_gt_sem_seg',
           'upsampled_cross_entropy']


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                        class_weight: torch.Tensor | None = None,
                        ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel softmax cross-entropy (B, H, W) of (B, K, H, W) logits, 0 at ``ignore_index``.

    Channels-last logits (as ``SegCriterion`` makes them) go through cross_entropy as a
    (B*H*W, K) matrix, a free view whose class axis is contiguous: softmax and its backward then
    run along rows instead of striding H*W floats between classes (1.4x faster for the
    quickstart's 150-class 128x128 loss, forward and backward; same values).
    """
    b, k, h, w = logits.shape
    if logits.is_contiguous(memory_format=torch.channels_last):
        # (B, K, H, W) channels-last -> (B, H, W, K) contiguous -> (B*H*W, K)
        rows = logits.permute(0, 2, 3, 1).reshape(b * h * w, k)
        return F.cross_entropy(rows, target.reshape(-1), weight=class_weight,
                               ignore_index=ignore_index, reduction='none').view(b, h, w)
    return F.cross_entropy(logits, target, weight=class_weight, ignore_index=ignore_index,
                           reduction='none')


class _UpsampledCrossEntropy(torch.autograd.Function):
    """Per-pixel cross-entropy of bilinearly resized logits that keeps one resized copy at a time.

    Autograd's chain (resize, log-softmax, NLL) keeps the resized logits and their log-softmax
    for the backward pass and then builds two gradients of the same size: at 150 classes each is
    315 MB for two 512x512 images, most of what a UperNet training step allocates. Here the
    forward keeps only the low-resolution logits and each pixel's log-sum-exp; the backward
    resizes again and turns that one buffer into the gradient in place (softmax minus one-hot,
    times the pixel's weight) before resizing it back. torch has no fused resize +
    cross-entropy; under torch.compile inductor fuses them itself and SegCriterion takes the
    plain path.
    """

    @staticmethod
    def forward(ctx, logits, target, class_weight, ignore_index, align_corners, chunk):
        resized = _resize_rows(logits, target.shape[-2:], align_corners)  # (B*H*W, K)
        labels, valid = _safe_labels(target, ignore_index)
        lse = torch.empty(labels.shape, dtype=resized.dtype, device=resized.device)
        pred = torch.empty(labels.shape, dtype=torch.long, device=resized.device)
        for start in range(0, resized.shape[0], chunk):  # bounded temporaries
            rows = resized[start:start + chunk]
            lse[start:start + chunk] = torch.logsumexp(rows, dim=-1)
            pred[start:start + chunk] = rows.argmax(-1)
        loss = lse - resized.gather(-1, labels[:, None])[:, 0]
        if class_weight is not None:
            loss = loss * class_weight[labels]
        loss = loss * valid
        ctx.save_for_backward(logits.detach(), labels, valid, class_weight, lse)
        ctx.align_corners = align_corners
        ctx.mark_non_differentiable(pred)
        return loss.view(target.shape), pred.view(target.shape)

    @staticmethod
    def backward(ctx, grad_loss, grad_pred):
        logits, labels, valid, class_weight, lse = ctx.saved_tensors
        b, out_h, out_w = grad_loss.shape
        with torch.enable_grad():
            # contiguous (B, K, H, W) here: the elementwise steps below do not care, and the
            # resize's backward would copy a channels-last gradient to this layout first
            source = logits.requires_grad_()
            resized = F.interpolate(source, size=(out_h, out_w), mode='bilinear',
                                    align_corners=ctx.align_corners)
        scale = grad_loss.reshape(-1) * valid
        if class_weight is not None:
            scale = scale * class_weight[labels]
        # d(lse - picked) / d resized = softmax - one-hot, written over the resized logits (the
        # resize's backward does not read its output)
        grad = resized.detach()
        per_pixel = (b, 1, out_h, out_w)
        grad.sub_(lse.view(per_pixel)).exp_()
        grad.scatter_add_(1, labels.view(per_pixel), grad.new_full(per_pixel, -1.0))
        grad.mul_(scale.view(per_pixel))
        return torch.autograd.grad(resized, source, grad)[0], None, None, None, None, None


def _resize_rows(logits: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """(B, K, h, w) logits resized bilinearly to ``size`` as a (B*H*W, K) matrix: channels-last,
    so the matrix is a free view and each pixel's classes are contiguous."""
    b, k = logits.shape[:2]
    resized = F.interpolate(logits.contiguous(memory_format=torch.channels_last), size=size,
                            mode='bilinear', align_corners=align_corners)
    return resized.permute(0, 2, 3, 1).reshape(-1, k)


def _safe_labels(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat labels with ignored pixels at class 0, and the flat float mask of valid pixels."""
    flat = target.reshape(-1)
    valid = flat != ignore_index
    return torch.where(valid, flat, torch.zeros_like(flat)), valid.to(torch.float32)


def upsampled_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                            class_weight: torch.Tensor | None = None, ignore_index: int = 255,
                            align_corners: bool = False, chunk: int = 1 << 14
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(F.interpolate(logits, target's size, mode='bilinear'), target,
    class_weight, ignore_index=..., reduction='none')`` and its gradient, holding one resized
    copy of the logits instead of four (see _UpsampledCrossEntropy).

    Args:
        logits: (B, K, h, w) logits.
        target: (B, H, W) long labels.
        class_weight: (K,) class weights, or None.
        ignore_index: label whose pixels get loss 0.
        align_corners: as in F.interpolate.
        chunk: pixels per step of the log-sum-exp (bounds its temporaries).

    Returns:
        (B, H, W) per-pixel losses, and the (B, H, W) argmax class of the resized logits (for
        the pixel accuracy).
    """
    if class_weight is not None and class_weight.numel() != logits.shape[1]:
        raise ValueError(f'class_weight has {class_weight.numel()} entries, the logits have '
                         f'{logits.shape[1]} classes')
    return _UpsampledCrossEntropy.apply(logits, target, class_weight, ignore_index,
                                        align_corners, chunk)


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
        per_pixel = pixel_cross_entropy(logits.float(), target, self.class_weight,
                                        self.ignore_index)  # (B, H, W)
        return self.reduce(per_pixel, target, weight)

    def reduce(self, per_pixel: torch.Tensor, target: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        """The loss from (B, H, W) per-pixel cross-entropies (pixel weights, averaging)."""
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
    return pixel_accuracy(logits.argmax(dim=1), target, ignore_index)


def pixel_accuracy(pred: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
                   ) -> torch.Tensor:
    """Percentage of non-ignored pixels whose predicted class equals the target (0 if none)."""
    valid = target != ignore_index
    correct = (pred == target) & valid
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
            loss = pixel_cross_entropy(logits.float(), safe_target)
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
        # cross-entropies alone need no resized logits (upsampled_cross_entropy); a sampler or
        # another loss reads them whole
        self._fused = self.sampler is None and all(
            type(loss) is CrossEntropyLoss for loss in self.losses)

    def _fused_forward(self, logits: torch.Tensor, target: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for loss in self.losses:
            per_pixel, pred = upsampled_cross_entropy(
                logits.float(), target, loss.class_weight, loss.ignore_index, self.align_corners)
            value = loss.reduce(per_pixel, target)
            out[loss.loss_name] = out[loss.loss_name] + value if loss.loss_name in out else value
        out['acc_seg'] = pixel_accuracy(pred, target, self.ignore_index)
        return out

    def forward(self, logits: torch.Tensor, data_samples: Sequence) -> dict[str, torch.Tensor]:
        target = stack_gt_sem_seg(data_samples).to(logits.device)
        if self._fused and not torch.compiler.is_compiling():
            return self._fused_forward(logits, target)
        # channels-last, so that the per-pixel softmax of the losses and the accuracy's argmax
        # run along contiguous classes (see pixel_cross_entropy); the values are unchanged
        logits = F.interpolate(logits.contiguous(memory_format=torch.channels_last),
                               size=target.shape[-2:], mode='bilinear',
                               align_corners=self.align_corners)
        weight = None if self.sampler is None else self.sampler(logits, target)
        out: dict[str, torch.Tensor] = {}
        for loss in self.losses:
            value = loss(logits, target, weight)
            out[loss.loss_name] = out[loss.loss_name] + value if loss.loss_name in out else value
        out['acc_seg'] = accuracy(logits.detach(), target, self.ignore_index)
        return out
