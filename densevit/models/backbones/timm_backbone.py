"""Any timm model as a densevit backbone: named feature maps from timm's own feature extraction.

Hierarchical models (ResNet, ConvNeXt, Swin, EfficientNet, ...) give one map per selected level of
their ``feature_info``, named by stride (``'s4'`` .. ``'s32'``). Plain ViTs (DeiT, MAE-style ViT,
DINOv2, EVA: every ``feature_info`` entry at the same stride) give the output of their last block
as one (B, C, H/p, W/p) map named ``'s{p}'``, prefix tokens dropped. Which kind a model is comes
from its ``feature_info``, never from its class name.

Both go through timm's ``features_only=True`` with ``feature_cls='getter'``: the model keeps its
own parameter names (under ``model.model.``) and runs ``forward_intermediates``, so layer ids come
from the model's ``group_matcher`` through ``timm.models.group_parameters``, the mapping timm's
``param_groups_layer_decay`` uses. What this adds to timm: naming maps by stride, accepting any
input size (models whose maps are not ceil(H / stride) at every size, such as timm's stride-4
convolution stems and patch embeddings, get the image padded to a multiple of the largest stride
and each map cropped to ceil(H / stride); models that already give ceil(H / stride), such as
ResNets, run on the image as it is, so their border features equal the official ones),
``dynamic_img_size=True`` for models whose constructor takes it, so ViTs run at sizes other than
their pretraining one, the frozen BatchNorm and frozen early stages of the DETR recipes
(``norm_eval``, ``frozen_modules``), and the per-level output LayerNorms that mmseg's and
transformers' ConvNeXt backbones put on every map they return (``out_norm='LN2d'``).

Two defaults differ from the segmentation ConvNeXt of mmseg and transformers: no output norms,
and the padding. ConvNeXt's stride-4 stem and stride-2 downsampling drop remainder rows and
columns, so at a size 32 does not divide mmseg and transformers compute floor-sized maps of the
unpadded image. ``out_norm='LN2d', pad_input=False`` runs the model as they do (what UperNet
checkpoints converted with ``hf_upernet`` need to reproduce their logits).
"""
from __future__ import annotations

import fnmatch
import inspect
import math
from typing import Any, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models import group_parameters
from timm.optim import auto_group_layers
from torch import nn

from densevit.registry import MODELS

from ..contract import Backbone, FeatureSpec

__all__ = ['TimmBackbone']

# keys TimmBackbone sets itself; passing them in model_kwargs would silently fight with it
_RESERVED = ('pretrained', 'checkpoint_path', 'features_only', 'feature_cls', 'out_indices',
             'pretrained_cfg_overlay')
_PREFIX = 'model.model.'  # FeatureGetterNet holds the timm model as ``.model``
# output norms by config name: a channels-first LayerNorm, eps 1e-6 (mmseg's LN2d, transformers'
# ConvNextLayerNorm(data_format='channels_first'))
OUT_NORMS = {'LN2d': LayerNorm2d}


@MODELS.register_module()
class TimmBackbone(Backbone):
    """A timm model giving stride-named maps (see the module docstring)."""

    def __init__(self, *, model_name: str, pretrained: bool = False, checkpoint_path: str = '',
                 out_indices: Sequence[int] | None = None,
                 model_kwargs: dict[str, Any] | None = None, norm_eval: bool = False,
                 frozen_modules: Sequence[str] = (), out_norm: str | None = None,
                 pad_input: bool = True) -> None:
        """
        Args:
            model_name: a ``timm.create_model`` name, e.g. ``'convnext_tiny'``,
                ``'vit_base_patch16_224'``.
            pretrained: load timm's pretrained weights for ``model_name`` (needs network or cache).
            checkpoint_path: load weights from this local file instead (through timm's own filter
                for the model, so official checkpoints timm can read work too).
            out_indices: levels of ``feature_info`` to return, for hierarchical models (default: the
                last four). Plain ViTs always return their last block; pass None for them.
            model_kwargs: further ``timm.create_model`` arguments (``drop_path_rate``,
                ``img_size``, ...).
            norm_eval: keep every BatchNorm in eval mode (running statistics) with its affine
                parameters frozen: the FrozenBatchNorm2d of DETR, Deformable DETR and DINO
                (the state dict keeps BatchNorm's keys, so checkpoints load either way).
            frozen_modules: names of the timm model's submodules whose parameters do not train,
                e.g. ``('conv1', 'bn1', 'layer1')`` for the ResNet stem and first stage as DETR
                freezes them.
            out_norm: None (the maps as timm returns them) or ``'LN2d'``: a LayerNorm over the
                channels of every returned map, held as ``out_norms.s{stride}``, as mmseg's
                ConvNeXt (``norm0..3``) and transformers' ``ConvNextBackbone``
                (``hidden_states_norms``) have. Classification checkpoints have none
                (``checkpoint_optional_keys``); layer-wise lr decay treats them as the head does.
            pad_input: True pads the image to a multiple of the largest stride where the model's
                maps would not be ceil(H / stride) (see the module docstring). False runs every
                model on the image as it is, so the maps are what the model computes: floor-sized
                for ConvNeXt, as mmseg and transformers compute them. The maps may then be smaller
                than ceil(H / stride), which heads that resize between levels (UPerHead, FCNHead)
                accept.
        """
        super().__init__()
        model_kwargs = dict(model_kwargs or {})
        clash = sorted(set(model_kwargs) & set(_RESERVED))
        if clash:
            raise ValueError(f'TimmBackbone model_kwargs {clash} are set by TimmBackbone itself; '
                             f'use its own arguments (pretrained, checkpoint_path, out_indices)')
        if out_norm is not None and out_norm not in OUT_NORMS:
            raise ValueError(f'TimmBackbone out_norm {out_norm!r} is unknown; use None or one of '
                             f'{sorted(OUT_NORMS)}')
        if not timm.is_model(model_name):
            raise ValueError(f'TimmBackbone: timm has no model {model_name!r} '
                             f'(see timm.list_models())')
        # a weightless probe on the meta device tells what the model offers before building it
        with torch.device('meta'):
            probe = timm.create_model(model_name, pretrained=False, **model_kwargs)
        if not hasattr(probe, 'forward_intermediates'):
            raise ValueError(f'TimmBackbone: timm model {model_name!r} has no '
                             f'forward_intermediates, which TimmBackbone needs')
        strides = [info['reduction'] for info in probe.feature_info]
        self.plain = len(set(strides)) == 1
        if self.plain:
            if out_indices is not None:
                raise ValueError(f'TimmBackbone: {model_name!r} is a plain (single-stride) model '
                                 f'that returns its last block only; out_indices must be None, '
                                 f'got {out_indices}')
            out_indices = (len(strides) - 1,)
        elif out_indices is None:
            out_indices = tuple(range(max(0, len(strides) - 4), len(strides)))
        accepted = inspect.signature(type(probe).__init__).parameters
        if 'dynamic_img_size' in accepted:
            model_kwargs.setdefault('dynamic_img_size', True)
        del probe

        self.model = timm.create_model(
            model_name, pretrained=pretrained or bool(checkpoint_path),
            pretrained_cfg_overlay=dict(file=checkpoint_path) if checkpoint_path else None,
            features_only=True, feature_cls='getter', out_indices=tuple(out_indices),
            **model_kwargs)
        info = self.model.feature_info
        self._names = [f's{stride}' for stride in info.reduction()]
        if len(set(self._names)) != len(self._names):
            raise ValueError(f'TimmBackbone: levels {list(out_indices)} of {model_name!r} have '
                             f'strides {info.reduction()}; choose out_indices with distinct '
                             f'strides')
        self.out_features = {name: FeatureSpec(channels=c, stride=s)
                             for name, c, s in zip(self._names, info.channels(), info.reduction())}
        self._size_divisor = 1 if not pad_input or _gives_ceil_maps(
            model_name, tuple(out_indices), model_kwargs, info.reduction()) \
            else max(info.reduction())
        self.out_norms = None if out_norm is None else nn.ModuleDict(
            {name: OUT_NORMS[out_norm](spec.channels) for name, spec in self.out_features.items()})

        inner = self.model.model
        if hasattr(inner, 'group_matcher'):
            layer_map = group_parameters(inner, inner.group_matcher(coarse=False), reverse=True)
        else:  # timm's own fallback in param_groups_layer_decay: fixed-size runs of parameters
            layer_map = auto_group_layers(inner)
        self._layer_map = {_PREFIX + name: layer for name, layer in layer_map.items()}
        self.num_layers = max(self._layer_map.values())
        if self.out_norms is not None:
            self._layer_map.update({'out_norms.' + name: self.num_layers + 1
                                    for name, _ in self.out_norms.named_parameters()})

        self.norm_eval = norm_eval
        modules = dict(inner.named_modules())
        unknown = [name for name in frozen_modules if name not in modules]
        if unknown:
            top = [name for name, _ in inner.named_children()]
            raise ValueError(f'TimmBackbone frozen_modules {unknown} are not submodules of '
                             f'{model_name!r}; its top-level modules are {top}')
        for name in frozen_modules:
            modules[name].requires_grad_(False)
        if norm_eval:
            for module in self._batch_norms():
                module.requires_grad_(False)
        self.train()

    def _batch_norms(self) -> list[torch.nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> 'TimmBackbone':
        super().train(mode)
        if self.norm_eval:
            for module in self._batch_norms():
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        d = self._size_divisor
        if d > 1:
            images = F.pad(images, (0, -width % d, 0, -height % d))
        maps = self.model(images)  # list of (B, C, Hp/s, Wp/s)
        out = {}
        for name, feat in zip(self._names, maps):
            stride = self.out_features[name].stride
            # (B, C, Hp/s, Wp/s) -> (B, C, ceil(H/s), ceil(W/s)); unpadded maps stay as they are
            feat = feat[..., :-(-height // stride), :-(-width // stride)]
            out[name] = feat if self.out_norms is None else self.out_norms[name](feat)
        return out

    def layer_id(self, param_name: str) -> int:
        """timm's group index of the parameter (0 = stem, num_layers = last group); the output
        norms num_layers + 1, not decayed (mmseg's ConvNeXt layer decay gives its ``norm{i}``
        the id after the last stage)."""
        if param_name not in self._layer_map:
            raise ValueError(f'TimmBackbone.layer_id: {param_name!r} is not a parameter of this '
                             f'backbone (names start with {_PREFIX!r} or out_norms.)')
        return self._layer_map[param_name]

    def checkpoint_optional_keys(self) -> set[str]:
        """The output norms: classification checkpoints have none."""
        return {key for key in self.state_dict() if key.startswith('out_norms.')}

    def no_weight_decay(self) -> set[str]:
        inner = self.model.model
        patterns = inner.no_weight_decay() if hasattr(inner, 'no_weight_decay') else set()
        return {_PREFIX + name for name, _ in inner.named_parameters()
                if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)}


def _gives_ceil_maps(model_name: str, out_indices: tuple[int, ...], model_kwargs: dict,
                     strides: Sequence[int]) -> bool:
    """Whether every selected map of the model is ceil(H / stride) x ceil(W / stride) at a size
    no stride divides (shape inference on the meta device; no weights are made)."""
    coarsest = max(strides)
    height, width = 2 * coarsest + 1, 2 * coarsest + 3
    try:
        with torch.device('meta'):
            model = timm.create_model(model_name, pretrained=False, features_only=True,
                                      feature_cls='getter', out_indices=out_indices,
                                      **model_kwargs)
            maps = model(torch.empty(1, 3, height, width))
    except (RuntimeError, ValueError, AssertionError, NotImplementedError):
        return False  # a model that cannot run at such a size is padded
    return all(tuple(m.shape[-2:]) == (math.ceil(height / s), math.ceil(width / s))
               for m, s in zip(maps, strides))
