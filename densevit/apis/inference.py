"""Build a model from a config with its weights, and run it on images."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from torch import nn

from densevit.checkpoint.reading import check_checkpoint_globals, check_plain_tensors
from densevit.engine.checkpoint import enable_safe_resume
from densevit.registry import MODELS
from densevit.structures import DataSample

from .config import load_config

__all__ = ['init_model', 'inference_model']


def init_model(config: str | Config, checkpoint: str | None = None, device: str = 'cpu',
               cfg_options: dict | None = None) -> nn.Module:
    """Build ``config``'s model, load ``checkpoint`` (a densevit/mmengine training checkpoint or a
    bare state dict) and put it in eval mode on ``device``.

    The checkpoint is read with ``weights_only=True`` after densevit's own scan of its globals
    (``densevit.checkpoint.reading``), and tensor subclasses are refused. The model keeps its config as ``model.cfg``
    and the dataset's metainfo (class names, palette) as ``model.dataset_meta`` when the
    checkpoint records it.
    """
    cfg = load_config(config, cfg_options)
    import densevit.models  # noqa: F401  (registers the model types)
    model = MODELS.build(cfg.model)
    model.cfg = cfg
    model.dataset_meta = None
    if checkpoint is not None:
        enable_safe_resume()
        check_checkpoint_globals(checkpoint)
        ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True)
        check_plain_tensors(ckpt, checkpoint)
        state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f'{checkpoint}: expected a dict with a state_dict, got '
                             f'{type(ckpt).__name__}')
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f'{checkpoint} does not fit {cfg.model.type}: missing '
                             f'{result.missing_keys[:10]}, unexpected '
                             f'{result.unexpected_keys[:10]}')
        model.dataset_meta = ckpt.get('meta', {}).get('dataset_meta')
    return model.to(device).eval()


def _test_pipeline(cfg: Config, from_file: bool) -> Compose:
    """The config's test pipeline without annotation loading (there are no labels), and without
    image loading when the images come as arrays."""
    from densevit.datasets.transforms import LoadAnnotations, LoadImageFromFile, build_pipeline
    skip = (LoadAnnotations,) if from_file else (LoadAnnotations, LoadImageFromFile)
    steps = build_pipeline(copy.deepcopy(cfg.test_dataloader.dataset.pipeline))
    return Compose([step for step in steps if not isinstance(step, skip)])


@torch.no_grad()
def inference_model(model: nn.Module, images: str | np.ndarray | Sequence[str | np.ndarray]
                    ) -> DataSample | list[DataSample]:
    """Run a model built by :func:`init_model` on image paths or RGB arrays (H, W, 3 uint8)."""
    single = isinstance(images, (str, np.ndarray))
    batch = [images] if single else list(images)
    items = []
    for image in batch:
        if isinstance(image, str):
            items.append(_test_pipeline(model.cfg, from_file=True)(dict(img_path=image)))
        else:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f'expected an RGB uint8 array (H, W, 3), got {image.dtype} '
                                 f'{image.shape}')
            items.append(_test_pipeline(model.cfg, from_file=False)(dict(
                img=image, img_path='', ori_shape=image.shape[:2], img_shape=image.shape[:2])))
    outputs = model.test_step(pseudo_collate(items))
    return outputs[0] if single else outputs
