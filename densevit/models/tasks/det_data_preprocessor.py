"""DetDataPreprocessor: SegDataPreprocessor's normalise-and-pad, plus what detection needs: instance
masks padded into the batch grid in training, and the per-image padding mask of a batch.

DETR-family heads must ignore padded pixels, so they take a (B, Hp, Wp) bool mask, True where a
pixel lies outside the image's valid part (metainfo ``img_shape``); ``padding_mask`` builds it.
A pipeline may pad the image itself (the ``Pad`` transform), so the mask follows ``img_shape``,
never the size of the tensor handed in.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ...registry import MODELS
from .data_preprocessor import SegDataPreprocessor

__all__ = ['DetDataPreprocessor', 'padding_mask', 'pad_masks']


def pad_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) masks -> (N, H, W) with zeros at the bottom and right (any dtype, bool too).

    Raises:
        ValueError: the masks are larger than ``size``.
    """
    n, h, w = masks.shape
    hp, wp = size
    if h > hp or w > wp:
        raise ValueError(f'instance masks of size {(h, w)} are larger than the padded batch '
                         f'{(hp, wp)}; the pipeline must resize masks with the image')
    if (h, w) == (hp, wp):
        return masks
    out = masks.new_zeros((n, hp, wp))
    out[:, :h, :w] = masks
    return out


def padding_mask(data_samples: Sequence | None, size: tuple[int, int], *,
                 batch_size: int | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(B, Hp, Wp) bool, True at padded pixels: everything outside each sample's ``img_shape``
    (padding is at the bottom and right). Without ``data_samples`` nothing is padding.

    Args:
        data_samples: the batch's samples (metainfo ``img_shape`` (h, w)), or None.
        size: (Hp, Wp) of the padded batch.
        batch_size: B when ``data_samples`` is None.
        device: where to put the mask.
    """
    hp, wp = size
    if data_samples is None:
        if batch_size is None:
            raise ValueError('padding_mask needs data_samples or batch_size')
        return torch.zeros((batch_size, hp, wp), dtype=torch.bool, device=device)
    mask = torch.ones((len(data_samples), hp, wp), dtype=torch.bool, device=device)
    for i, sample in enumerate(data_samples):
        h, w = sample.metainfo.get('img_shape', (hp, wp))[:2]
        mask[i, :h, :w] = False
    return mask


@MODELS.register_module()
class DetDataPreprocessor(SegDataPreprocessor):
    """Normalise, pad to a common size, move to the model's device; in training also pad
    ``gt_instances.masks`` to the padded batch (zeros in the padding).

    Padding is as in ``SegDataPreprocessor``: to the batch's largest image, in training at least
    ``size``, rounded up to a multiple of ``size_divisor``. Use ``size_divisor`` = the coarsest
    feature stride for multi-scale necks (the ``Detector`` does so by default) and, for
    ViTDet-style large-scale jitter (``LargeScaleJitter`` crops to at most its ``scale`` and does
    not pad), a fixed square ``size`` = that scale, e.g. (1024, 1024), so every training batch is
    the square the recipe trains on. Each sample gets metainfo ``pad_shape`` = (Hp, Wp) and
    ``img_shape`` if the pipeline did not set it. Outside training annotations are left at their
    own size (the metric compares at ``ori_shape``).

    Args:
        mean: per-channel mean on the 0..255 scale, RGB.
        std: per-channel std on the 0..255 scale, RGB.
        size: minimum padded (H, W) in training.
        size_divisor: pad H and W up to a multiple of this.
        pad_val: value of padded image pixels (in normalised units).
        bgr_to_rgb: swap channel order first (for pipelines that load BGR).
        non_blocking: passed to the device copy.
    """

    def __init__(self, *, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375),
                 size: Sequence[int] | None = None, size_divisor: int | None = None,
                 pad_val: float = 0.0, bgr_to_rgb: bool = False,
                 non_blocking: bool = False) -> None:
        super().__init__(mean=mean, std=std, size=size, size_divisor=size_divisor,
                         pad_val=pad_val, bgr_to_rgb=bgr_to_rgb, non_blocking=non_blocking)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = super().forward(data, training)
        samples = data['data_samples']
        if training and samples is not None:
            size = tuple(data['inputs'].shape[-2:])
            for sample in samples:
                instances = sample.get('gt_instances')
                if instances is not None and 'masks' in instances:
                    instances.masks = pad_masks(instances.masks, size)
        return data
