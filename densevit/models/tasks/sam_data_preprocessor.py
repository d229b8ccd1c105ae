"""SamDataPreprocessor: SAM's preprocessing (longest side to the model's size, pixel mean / std,
pad to a square at the bottom and right) for batches from a densevit pipeline.

segment-anything resizes in its predictor (``ResizeLongestSide.apply_image``, PIL bilinear on
uint8) and normalises and pads in ``Sam.preprocess``. Here both happen on the batch, so a dataset
pipeline needs no SAM-specific resize: an image whose longer side is not ``image_size`` yet is
resized to segment-anything's ``get_preprocess_shape`` (bilinear with antialiasing on the uint8
tensor, as close to PIL as torchvision gets), its metainfo ``img_shape`` and ``scale_factor``
follow, and in training its ``gt_instances`` (boxes and masks) are resized with it. An image
already at that size (what ``densevit.apis.SamPredictor`` hands in, resized by segment-anything's
own transform) is not touched, so the predictor reproduces segment-anything exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.transforms.v2.functional import resize

from ...registry import MODELS
from .det_data_preprocessor import DetDataPreprocessor

__all__ = ['SamDataPreprocessor', 'preprocess_shape']


def preprocess_shape(h: int, w: int, image_size: int) -> tuple[int, int]:
    """(h', w') of an (h, w) image whose longer side is resized to ``image_size`` (rounded as
    segment-anything rounds)."""
    return ResizeLongestSide.get_preprocess_shape(h, w, image_size)


@MODELS.register_module()
class SamDataPreprocessor(DetDataPreprocessor):
    """Resize the longer side to ``image_size``, normalise, pad to ``(image_size, image_size)``.

    Args:
        image_size: side of the square model input (1024 for the official SAM models).
        mean: per-channel mean on the 0..255 scale, RGB (SAM's ``pixel_mean``).
        std: per-channel std on the 0..255 scale, RGB (SAM's ``pixel_std``).
        bgr_to_rgb: swap channel order first (for pipelines that load BGR).
        non_blocking: passed to the device copy.
    """

    def __init__(self, *, image_size: int = 1024,
                 mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), bgr_to_rgb: bool = False,
                 non_blocking: bool = False) -> None:
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(f'image_size must be a positive integer; got {image_size!r}')
        super().__init__(mean=mean, std=std, size=(image_size, image_size), pad_val=0.0,
                         bgr_to_rgb=bgr_to_rgb, non_blocking=non_blocking)
        self.image_size = int(image_size)

    def padded_size(self, sizes: Sequence[tuple[int, int]],
                    training: bool = False) -> tuple[int, int]:
        """Always the square ``(image_size, image_size)``, in training and at test time alike:
        the prompt encoder's positional grid is the square's (``Sam.preprocess`` pads so)."""
        if max(max(s) for s in sizes) > self.image_size:
            raise ValueError(f'images of sizes {list(sizes)} are larger than the square input '
                             f'{self.image_size}')
        return self.image_size, self.image_size

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        samples = data.get('data_samples')
        if isinstance(inputs, torch.Tensor):
            if inputs.ndim != 4:
                raise ValueError(f'inputs tensor must be (B, 3, H, W); got {tuple(inputs.shape)}')
            inputs = list(inputs)
        resized = []
        for i, img in enumerate(inputs):
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f'inputs[{i}] must be a (3, H, W) image; got {tuple(img.shape)}')
            sample = samples[i] if samples is not None else None
            resized.append(self._resize(img, sample, training))
        data['inputs'] = resized
        return super().forward(data, training)

    def _resize(self, img: torch.Tensor, sample, training: bool) -> torch.Tensor:
        """One (3, h, w) image at longer side ``image_size``, its sample's metainfo and (in
        training) ground truth resized along."""
        h, w = img.shape[-2:]
        if max(h, w) == self.image_size:
            return img
        nh, nw = preprocess_shape(h, w, self.image_size)
        img = resize(img, [nh, nw], antialias=True)
        if sample is None:
            return img
        meta = sample.metainfo
        ori_h, ori_w = meta.get('ori_shape', (h, w))[:2]
        sample.set_metainfo(dict(img_shape=(nh, nw), scale_factor=(nw / ori_w, nh / ori_h)))
        gt = sample.get('gt_instances')
        if training and gt is not None:
            if 'bboxes' in gt:
                gt.bboxes = gt.bboxes * gt.bboxes.new_tensor([nw / w, nh / h, nw / w, nh / h])
            if 'masks' in gt and len(gt.masks):
                # (N, h, w) bool -> (N, nh, nw): bilinear on the 0/1 map, then >= 0.5
                masks = F.interpolate(gt.masks[None].float(), size=(nh, nw), mode='bilinear',
                                      align_corners=False)[0]
                gt.masks = masks >= 0.5
            elif 'masks' in gt:
                gt.masks = gt.masks.new_zeros((0, nh, nw))
        return img
