"""Segmentor: backbone (+ neck) + decode head (+ auxiliary heads) for semantic segmentation, with
whole-image or sliding-window inference and optional multi-scale / flip test-time augmentation."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn

from ...checkpoint.loading import load_backbone_checkpoint
from ...registry import MODELS
from ...structures import DataSample, PixelData
from .finite import check_finite_losses

__all__ = ['Segmentor', 'slide_windows']

logger = logging.getLogger('densevit')

_TEST_CFG_KEYS = {'mode', 'crop_size', 'stride', 'batch_size', 'tta'}
_TTA_KEYS = {'scales', 'flip'}


def slide_windows(size: tuple[int, int], crop_size: tuple[int, int],
                  stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Windows (y1, y2, x1, x2) of at most ``crop_size`` stepping by ``stride`` that cover every
    pixel of an image of ``size``; the last window in each direction is aligned to the border, and
    a side shorter than the crop gets one window of that side's length.
    """
    def starts(length: int, crop: int, step: int) -> list[int]:
        if length <= crop:
            return [0]
        n = -(-(length - crop) // step) + 1  # ceil((length - crop) / step) + 1 windows
        return [min(i * step, length - crop) for i in range(n)]

    (h, w), (ch, cw), (sh, sw) = size, crop_size, stride
    return [(y, min(y + ch, h), x, min(x + cw, w))
            for y in starts(h, ch, sh) for x in starts(w, cw, sw)]


@MODELS.register_module()
class Segmentor(BaseModel):
    """Encoder-decoder semantic segmentation model.

    Args:
        backbone: backbone config (MODELS), e.g. ``dict(type='Swin', ...)``.
        decode_head: head config; built with ``input_shapes`` of the neck (or backbone) output.
        neck: optional neck config; built with ``input_shapes=backbone.out_features``.
        auxiliary_head: optional head config or list of them (trained, not used at inference).
        data_preprocessor: ``SegDataPreprocessor`` config (default: ImageNet mean/std, no padding).
        test_cfg: ``dict(mode='whole')`` or ``dict(mode='slide', crop_size=(512, 512),
            stride=(341, 341), batch_size=4)``, plus optionally
            ``tta=dict(scales=(0.5, ..., 1.75), flip=True)`` (softmax probabilities averaged; then
            ``seg_logits`` holds the averaged probabilities).
        backbone_checkpoint: path of a converted backbone state dict loaded at ``init_weights``,
            completely or not at all (``load_backbone_checkpoint``: ``backbone.*`` / ``neck.*``
            keys of whole-model converters go to the backbone / neck).
        init_cfg: mmengine init config.
    """

    # raise FloatingPointError on a NaN/inf loss; the engine turns it off when the optim wrapper
    # skips such steps instead (``skip_nonfinite``)
    check_finite_loss = True

    def __init__(self, *, backbone: dict, decode_head: dict, neck: dict | None = None,
                 auxiliary_head: dict | list[dict] | None = None,
                 data_preprocessor: dict | None = None, test_cfg: dict | None = None,
                 backbone_checkpoint: str | None = None, init_cfg: dict | None = None) -> None:
        preprocessor = MODELS.build(data_preprocessor if data_preprocessor is not None
                                    else dict(type='SegDataPreprocessor'))
        super().__init__(data_preprocessor=preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        shapes = self.backbone.out_features
        self.neck = None
        if neck is not None:
            self.neck = MODELS.build(neck, default_args=dict(input_shapes=shapes))
            shapes = self.neck.out_features
        self.decode_head = MODELS.build(decode_head, default_args=dict(input_shapes=shapes))
        aux = [] if auxiliary_head is None else (
            [auxiliary_head] if isinstance(auxiliary_head, dict) else list(auxiliary_head))
        self.auxiliary_heads = nn.ModuleList(
            MODELS.build(cfg, default_args=dict(input_shapes=shapes)) for cfg in aux)
        self.test_cfg = self._check_test_cfg(dict(mode='whole') if test_cfg is None else test_cfg)
        self.backbone_checkpoint = backbone_checkpoint
        self.num_classes = self.decode_head.num_classes
        self.align_corners = getattr(self.decode_head, 'align_corners', False)

    @staticmethod
    def _check_test_cfg(cfg: Mapping) -> dict:
        cfg = dict(cfg)
        unknown = set(cfg) - _TEST_CFG_KEYS
        if unknown:
            raise KeyError(f'test_cfg has unknown keys {sorted(unknown)}; known: '
                           f'{sorted(_TEST_CFG_KEYS)}')
        mode = cfg.setdefault('mode', 'whole')
        if mode not in ('whole', 'slide'):
            raise ValueError(f"test_cfg mode must be 'whole' or 'slide'; got {mode!r}")
        if mode == 'slide':
            for key in ('crop_size', 'stride'):
                if key not in cfg or len(cfg[key]) != 2:
                    raise ValueError(f"test_cfg mode='slide' needs {key}=(H, W); got "
                                     f'{cfg.get(key)!r}')
                cfg[key] = tuple(int(v) for v in cfg[key])
        elif {'crop_size', 'stride'} & set(cfg):
            raise ValueError("test_cfg crop_size / stride apply only to mode='slide'")
        cfg.setdefault('batch_size', 1)
        tta = cfg.get('tta')
        if tta is not None:
            unknown = set(tta) - _TTA_KEYS
            if unknown:
                raise KeyError(f'test_cfg.tta has unknown keys {sorted(unknown)}; known: '
                               f'{sorted(_TTA_KEYS)}')
            cfg['tta'] = dict(scales=tuple(tta.get('scales', (1.0,))),
                              flip=bool(tta.get('flip', False)))
        return cfg

    def init_weights(self) -> None:
        super().init_weights()
        if self.backbone_checkpoint is not None:
            load_backbone_checkpoint(self.backbone_checkpoint, self.backbone, self.neck)

    # ---------------------------------------------------------------- features and logits
    def extract_feat(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(inputs)
        return self.neck(features) if self.neck is not None else features

    def encode_decode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) at the input size."""
        return self.decode_head.predict(self.extract_feat(inputs), out_size=inputs.shape[-2:])

    def slide_inference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) averaged over overlapping windows (``test_cfg`` crop and stride);
        windows of all images are run ``batch_size`` at a time. On a side shorter than the crop,
        the windows are padded at the bottom / right to the crop size with 0 (the normalised
        mean, as the training batches are), so the model always sees its training size."""
        b, _, h, w = inputs.shape
        crop_h, crop_w = self.test_cfg['crop_size']
        windows = slide_windows((h, w), (crop_h, crop_w), self.test_cfg['stride'])
        logits = inputs.new_zeros((b, self.num_classes, h, w))
        count = inputs.new_zeros((1, 1, h, w))
        for y1, y2, x1, x2 in windows:
            count[..., y1:y2, x1:x2] += 1
        # every window has the same size (see slide_windows), so crops of all images stack
        jobs = [(i, win) for win in windows for i in range(b)]
        step = max(int(self.test_cfg['batch_size']), 1)
        for start in range(0, len(jobs), step):
            chunk = jobs[start:start + step]
            crops = torch.stack([inputs[i, :, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
            ch, cw = crops.shape[-2:]
            crops = F.pad(crops, (0, crop_w - cw, 0, crop_h - ch))
            out = self.encode_decode(crops)[..., :ch, :cw]
            for (i, (y1, y2, x1, x2)), crop_logits in zip(chunk, out):
                logits[i, :, y1:y2, x1:x2] += crop_logits
        return logits / count

    def inference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits at the padded input size, by the ``test_cfg`` mode, before any TTA."""
        if self.test_cfg['mode'] == 'slide':
            return self.slide_inference(inputs)
        return self.encode_decode(inputs)

    def tta_inference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities averaged over ``test_cfg.tta`` scales and horizontal flips."""
        tta = self.test_cfg['tta']
        size = inputs.shape[-2:]
        probs, n = 0.0, 0
        for scale in tta['scales']:
            scaled = inputs if scale == 1.0 else F.interpolate(
                inputs, size=(round(size[0] * scale), round(size[1] * scale)), mode='bilinear',
                align_corners=self.align_corners)
            for flip in ((False, True) if tta['flip'] else (False,)):
                x = scaled.flip(-1) if flip else scaled
                logits = self.inference(x)
                if flip:
                    logits = logits.flip(-1)
                logits = F.interpolate(logits, size=size, mode='bilinear',
                                       align_corners=self.align_corners)
                probs = probs + logits.softmax(dim=1)
                n += 1
        return probs / n

    def postprocess(self, logits: torch.Tensor, data_samples: Sequence | None) -> list:
        """Crop padding (img_shape), resize to ori_shape, undo a pipeline flip, argmax; sets
        ``seg_logits`` and ``pred_sem_seg`` on each sample (made if ``data_samples`` is None)."""
        if data_samples is None:
            size = tuple(logits.shape[-2:])
            data_samples = [DataSample(metainfo=dict(img_shape=size, ori_shape=size))
                            for _ in range(logits.shape[0])]
        for sample, sample_logits in zip(data_samples, logits):
            meta = sample.metainfo
            h, w = meta.get('img_shape', sample_logits.shape[-2:])[:2]
            out = sample_logits[None, :, :h, :w]  # padding is at the bottom and right
            ori = tuple(meta.get('ori_shape', (h, w))[:2])
            if ori != (h, w):
                out = F.interpolate(out, size=ori, mode='bilinear',
                                    align_corners=self.align_corners)
            if meta.get('flip', False):
                direction = meta.get('flip_direction', 'horizontal')
                dims = {'horizontal': (-1,), 'vertical': (-2,), 'diagonal': (-2, -1)}.get(direction)
                if dims is None:
                    raise ValueError(f'unknown flip_direction {direction!r}; expected horizontal, '
                                     'vertical or diagonal')
                out = out.flip(dims)
            out = out[0]
            sample.seg_logits = PixelData(data=out)
            sample.pred_sem_seg = PixelData(data=out.argmax(dim=0, keepdim=True))
        return list(data_samples)

    # ---------------------------------------------------------------- mmengine entry points
    def forward(self, inputs: torch.Tensor, data_samples: Sequence | None = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.decode_head(self.extract_feat(inputs))
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor'; got {mode!r}")

    def loss(self, inputs: torch.Tensor, data_samples: Sequence) -> dict[str, torch.Tensor]:
        features = self.extract_feat(inputs)
        losses = {f'decode.{k}': v for k, v in self.decode_head.loss(features,
                                                                     data_samples).items()}
        for i, head in enumerate(self.auxiliary_heads):
            prefix = 'aux' if len(self.auxiliary_heads) == 1 else f'aux_{i}'
            losses.update({f'{prefix}.{k}': v for k, v in head.loss(features,
                                                                    data_samples).items()})
        if self.check_finite_loss:
            check_finite_losses(losses, data_samples)
        return losses

    def predict(self, inputs: torch.Tensor, data_samples: Sequence | None = None) -> list:
        if self.test_cfg.get('tta') is not None:
            logits = self.tta_inference(inputs)
        else:
            logits = self.inference(inputs)
        return self.postprocess(logits, data_samples)
