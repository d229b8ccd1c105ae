"""PromptedInstanceSegmenter: a detector's boxes as prompts to a promptable segmenter, so a
box-only detector yields instance masks (and COCO mask AP).

Call graph (inference only; train the two parts separately):

    predict(inputs, data_samples)                 inputs: the detector's preprocessed batch
      ├─ detector.predict(inputs, data_samples)   pred_instances: boxes at ori_shape, scores, labels
      └─ per image
           ├─ _segmenter_input(inputs[i], sample)  the unpadded image back to uint8, then the
           │                                       segmenter's preprocessing (resize, normalise, pad)
           ├─ segmenter.image_embedding
           └─ segmenter.decode(boxes in its input frame), postprocess_masks -> masks at ori_shape

The detector's own masks, if it predicts any, are replaced by the segmenter's.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Mapping, Sequence

import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from torchvision.transforms.v2.functional import resize

from ...checkpoint.loading import load_state_dict
from ...checkpoint.reading import read_state_dict
from ...registry import MODELS
from .sam_data_preprocessor import preprocess_shape

__all__ = ['PromptedInstanceSegmenter']

logger = logging.getLogger('densevit')

_TEST_CFG_DEFAULTS = dict(prompt_batch=64)


def _model_cfg(cfg: Mapping | str, role: str) -> dict:
    """A model config, given as a dict or as the path of a config file (its ``model``)."""
    if isinstance(cfg, str):
        if not osp.isfile(cfg):
            raise FileNotFoundError(f'{role} config {cfg!r} does not exist')
        return Config.fromfile(cfg).model.to_dict()
    return dict(cfg)


def _checkpoint_file(path: str, role: str) -> str:
    """``path`` itself, or for a work dir the checkpoint its ``last_checkpoint`` names."""
    if osp.isdir(path):
        pointer = osp.join(path, 'last_checkpoint')
        if not osp.isfile(pointer):
            raise FileNotFoundError(f'{role}_checkpoint {path!r} is a folder without a '
                                    'last_checkpoint file; name the .pth file, or train first')
        with open(pointer) as f:
            path = f.read().strip()
    if not osp.isfile(path):
        raise FileNotFoundError(f'{role}_checkpoint {path!r} does not exist')
    return path


@MODELS.register_module()
class PromptedInstanceSegmenter(BaseModel):
    """Detector boxes -> promptable segmenter masks.

    Args:
        detector: a ``Detector`` model config, or the path of a config file whose ``model`` it is.
            Its data preprocessor is this model's (the dataset pipeline is the detector's).
        segmenter: a ``PromptableSegmenter`` model config, or a config file's path.
        detector_checkpoint: the detector's weights: a checkpoint file or a training work dir
            (its ``last_checkpoint``); loaded when the model is built.
        segmenter_checkpoint: the segmenter's weights, the same way.
        test_cfg: ``prompt_batch``: boxes decoded per call (bounds memory; default 64).
        init_cfg: mmengine init config.
    """

    def __init__(self, *, detector: Mapping | str, segmenter: Mapping | str,
                 detector_checkpoint: str | None = None,
                 segmenter_checkpoint: str | None = None, test_cfg: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        built_detector = MODELS.build(_model_cfg(detector, 'detector'))
        super().__init__(data_preprocessor=built_detector.data_preprocessor, init_cfg=init_cfg)
        self.detector = built_detector
        self.segmenter = MODELS.build(_model_cfg(segmenter, 'segmenter'))
        for part, needs in ((self.detector, 'postprocess'), (self.segmenter, 'decode')):
            if not hasattr(part, needs):
                raise TypeError(f'{type(part).__name__} has no {needs}(): PromptedInstanceSegmenter '
                                'pairs a Detector with a PromptableSegmenter')
        unknown = set(test_cfg or {}) - set(_TEST_CFG_DEFAULTS)
        if unknown:
            raise KeyError(f'PromptedInstanceSegmenter test_cfg has unknown keys '
                           f'{sorted(unknown)}; allowed: {sorted(_TEST_CFG_DEFAULTS)}')
        self.test_cfg = {**_TEST_CFG_DEFAULTS, **(test_cfg or {})}
        # loaded now, not at init_weights: the Runner initialises weights only to train, and
        # this model is only evaluated (tools/test.py CONFIG, without a checkpoint of its own)
        for role, path in (('detector', detector_checkpoint),
                           ('segmenter', segmenter_checkpoint)):
            if path is not None:
                path = _checkpoint_file(path, role)
                logger.info('loading %s weights from %s', role, path)
                try:
                    load_state_dict(getattr(self, role), read_state_dict(path), strict=True)
                except ValueError as error:
                    raise ValueError(f'{role}_checkpoint {path} does not fit the {role}: '
                                     f'{error}') from None

    # ---------------------------------------------------------------- mmengine entry points
    def forward(self, inputs: torch.Tensor, data_samples: Sequence | None = None,
                mode: str = 'predict'):
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f"PromptedInstanceSegmenter only predicts (mode='predict'); got "
                         f"{mode!r}: train the detector and the segmenter on their own configs")

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, data_samples: Sequence | None = None) -> list:
        samples = self.detector.predict(inputs, data_samples)
        for image, sample in zip(inputs, samples):
            result = sample.pred_instances
            ori_h, ori_w = sample.metainfo.get('ori_shape', sample.metainfo['img_shape'])[:2]
            seg_input, input_size = self._segmenter_input(image, sample)
            embedding = self.segmenter.image_embedding(seg_input)
            # boxes at ori_shape -> the segmenter's input frame
            scale = result.bboxes.new_tensor([input_size[1] / ori_w, input_size[0] / ori_h] * 2)
            masks = []
            for boxes in (result.bboxes * scale).split(self.test_cfg['prompt_batch']):
                low_res, _ = self.segmenter.decode(embedding, boxes=boxes,
                                                   multimask_output=False)
                logits = self.segmenter.postprocess_masks(low_res, input_size, (ori_h, ori_w))
                masks.append(logits[:, 0] > self.segmenter.mask_threshold)
            result.masks = (torch.cat(masks) if masks else
                            torch.zeros((0, ori_h, ori_w), dtype=torch.bool, device=inputs.device))
        return samples

    def _segmenter_input(self, image: torch.Tensor, sample
                         ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The detector's normalised, padded (3, Hp, Wp) image -> the segmenter's (1, 3, S, S)
        input and the (h, w) the image takes in it. The unpadded part is turned back into uint8
        RGB (exact when the detector's pipeline did not resize), flipped back if the pipeline
        flipped it, resized to the segmenter's longest side and normalised and padded by the
        segmenter's own data preprocessor."""
        h, w = sample.metainfo['img_shape'][:2]
        pre = self.detector.data_preprocessor
        pixels = (image[:, :h, :w] * pre.std + pre.mean).round().clamp(0, 255).to(torch.uint8)
        meta = sample.metainfo
        if meta.get('flip', False):
            direction = meta.get('flip_direction') or 'horizontal'
            pixels = pixels.flip({'horizontal': [-1], 'vertical': [-2],
                                  'diagonal': [-2, -1]}[direction])
        ori_h, ori_w = meta.get('ori_shape', (h, w))[:2]
        # one resize, to where the original image lands in the segmenter's input, so the boxes
        # (at ori_shape) map there by one scale
        size = preprocess_shape(ori_h, ori_w, self.segmenter.image_size)
        if (h, w) != size:
            pixels = resize(pixels, list(size), antialias=True)
        batch = self.segmenter.data_preprocessor(dict(inputs=[pixels], data_samples=None), False)
        return batch['inputs'], size
