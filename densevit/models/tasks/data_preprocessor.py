"""SegDataPreprocessor: uint8 images from the pipeline -> one normalised, padded float batch.

mmengine's ImgDataPreprocessor normalises and pads images but knows nothing of segmentation maps;
this one also pads ``gt_sem_seg`` with the ignore label in training and records ``pad_shape``.
This is the one place a batch is padded (after normalisation, as mmseg 1.x and detectron2 do):
the pipeline's crops and jitters leave images smaller than the training size rather than padding
raw pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor

from ...registry import MODELS
from ...structures import PixelData

__all__ = ['SegDataPreprocessor']


@MODELS.register_module()
class SegDataPreprocessor(BaseDataPreprocessor):
    """Normalise, pad to a common size, move to the model's device.

    Input ``{'inputs': list of uint8 (3, H, W) tensors (RGB) or a (B, 3, H, W) tensor,
    'data_samples': list of DataSample}``; output ``{'inputs': float (B, 3, Hp, Wp),
    'data_samples'}``. Images are padded at the bottom and right with ``pad_val`` (after
    normalisation) to the batch's largest size, in training at least ``size``, rounded up to a
    multiple of ``size_divisor``. Each sample gets metainfo ``pad_shape`` (and ``img_shape`` if the
    pipeline did not set it). In training ``gt_sem_seg`` is padded the same way with
    ``seg_pad_val``; outside training it is left untouched (the metric compares at ori_shape).

    ``size`` applies in training only, as mmseg's ``SegDataPreProcessor(size=crop_size)``: whole-
    image inference runs on the image as it is (a sliding-window ``Segmentor`` pads its own
    windows), and a detector tests at the size its test pipeline gives.

    Args:
        mean: per-channel mean on the 0..255 scale, RGB.
        std: per-channel std on the 0..255 scale, RGB.
        size: minimum padded (H, W) in training, e.g. (512, 512) = the training crop.
        size_divisor: pad H and W up to a multiple of this (training and test).
        pad_val: value of padded image pixels (in normalised units).
        seg_pad_val: value of padded label pixels (the ignore index).
        bgr_to_rgb: swap channel order first (for pipelines that load BGR).
        non_blocking: passed to the device copy.
    """

    def __init__(self, *, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375),
                 size: Sequence[int] | None = None, size_divisor: int | None = None,
                 pad_val: float = 0.0, seg_pad_val: int = 255, bgr_to_rgb: bool = False,
                 non_blocking: bool = False) -> None:
        super().__init__(non_blocking=non_blocking)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f'mean and std need 3 values (RGB); got {list(mean)}, {list(std)}')
        if size is not None and len(size) != 2:
            raise ValueError(f'size must be (H, W); got {size}')
        # (3,) -> (3, 1, 1), broadcast over (3, H, W) images
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float).view(3, 1, 1), False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float).view(3, 1, 1), False)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val
        self.bgr_to_rgb = bgr_to_rgb

    def padded_size(self, sizes: Sequence[tuple[int, int]],
                    training: bool = False) -> tuple[int, int]:
        """The (Hp, Wp) a batch of images of ``sizes`` is padded to (``size`` in training only)."""
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        if training and self.size is not None:
            h, w = max(h, self.size[0]), max(w, self.size[1])
        if self.size_divisor:
            h = math.ceil(h / self.size_divisor) * self.size_divisor
            w = math.ceil(w / self.size_divisor) * self.size_divisor
        return h, w

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        samples = data.get('data_samples')
        if isinstance(inputs, torch.Tensor):
            if inputs.ndim != 4:
                raise ValueError(f'inputs tensor must be (B, 3, H, W); got {tuple(inputs.shape)}')
            inputs = list(inputs)
        for i, img in enumerate(inputs):
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f'inputs[{i}] must be a (3, H, W) image; got {tuple(img.shape)}')
        if samples is not None and len(samples) != len(inputs):
            raise ValueError(f'{len(inputs)} inputs but {len(samples)} data_samples')
        hp, wp = self.padded_size([tuple(img.shape[-2:]) for img in inputs], training)
        batch = []
        for img in inputs:
            if self.bgr_to_rgb:
                img = img.flip(0)
            img = (img.float() - self.mean) / self.std
            h, w = img.shape[-2:]
            batch.append(F.pad(img, (0, wp - w, 0, hp - h), value=self.pad_val))
        if samples is not None:
            for img, sample in zip(inputs, samples):
                meta = dict(pad_shape=(hp, wp))
                if 'img_shape' not in sample.metainfo:
                    meta['img_shape'] = tuple(img.shape[-2:])
                if 'ori_shape' not in sample.metainfo:
                    meta['ori_shape'] = tuple(img.shape[-2:])
                sample.set_metainfo(meta)
                if training and 'gt_sem_seg' in sample:
                    seg = sample.gt_sem_seg.data
                    h, w = seg.shape[-2:]
                    if h > hp or w > wp:
                        raise ValueError(f'gt_sem_seg {tuple(seg.shape)} is larger than the padded '
                                         f'image ({hp}, {wp}); the pipeline must resize both')
                    # PixelData fixes its size once set, so the padded map is a new PixelData
                    sample.gt_sem_seg = PixelData(
                        data=F.pad(seg, (0, wp - w, 0, hp - h), value=self.seg_pad_val),
                        metainfo=sample.gt_sem_seg.metainfo)
        return dict(inputs=torch.stack(batch), data_samples=samples)
