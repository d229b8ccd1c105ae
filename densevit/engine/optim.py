"""Layer-wise learning-rate decay, with layer ids reported by the backbone itself, and the
weight-decay exemptions each recipe states.

mmengine's DefaultOptimWrapperConstructor has per-name multipliers but no notion of depth; ViTDet,
BEiT and MAE fine-tuning scale each layer's lr by ``rate ** (num_layers + 1 - layer_id)``. The
backbone says which layer a parameter belongs to (``Backbone.layer_id``), so no config carries
parameter-name regexes.

Which parameters take no weight decay differs between recipes, and a config names its recipe's
rule with ``no_decay`` (kinds in ``NO_DECAY_KINDS``):
- ViTDet (detectron2 ``weight_decay_norm=0`` + ``overrides={'pos_embed': ...}``): ``('norm',
  'pos_embed')``; biases and relative-position tables decay.
- mmseg's Swin / DiNAT UperNet (``custom_keys`` 'norm', 'relative_position_bias_table' / 'rpb',
  'absolute_pos_embed'): ``('backbone_norm', 'tables')``; matched by name in mmseg, the key
  'norm' misses the heads' BatchNorms (named 'bn'), and biases decay.
- timm / BEiT-style (the default): ``('1d', 'tables')``: every parameter of at most one dimension.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from densevit.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

__all__ = ['LayerDecayOptimWrapperConstructor', 'layer_decay_param_groups',
           'CPUAutocastOptimWrapper', 'NO_DECAY_KINDS']

NO_DECAY_KINDS = {
    'norm': 'weights and biases of every normalisation layer of the model',
    'backbone_norm': "weights and biases of the backbone's normalisation layers",
    'bias': 'every bias',
    '1d': 'every parameter of at most one dimension (norms, biases, layer scales)',
    'pos_embed': 'absolute position embeddings the backbone names in no_weight_decay()',
    'tables': 'every table the backbone names in no_weight_decay() (absolute and relative '
              'position tables, class tokens)',
}
DEFAULT_NO_DECAY = ('1d', 'tables')

# torch's normalisation layers (detectron2's norm_module_types; timm's LayerNorm2d and densevit's
# SyncBatchNorm are subclasses)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               nn.RMSNorm)


def _norm_params(module: nn.Module) -> set[int]:
    """ids of the parameters that belong directly to a normalisation layer inside ``module``."""
    return {id(p) for m in module.modules() if isinstance(m, _NORM_TYPES)
            for p in m.parameters(recurse=False)}


def _check_no_decay(no_decay) -> tuple[str, ...]:
    if isinstance(no_decay, str):
        no_decay = (no_decay,)
    unknown = [kind for kind in no_decay if kind not in NO_DECAY_KINDS]
    if unknown:
        raise ValueError(f'no_decay kinds {unknown} are unknown; choose from '
                         f'{sorted(NO_DECAY_KINDS)}')
    return tuple(no_decay)


def _matches(name: str, names: set[str]) -> bool:
    """``name`` is one of ``names`` or ends with '.' + one of them."""
    return any(name == n or name.endswith('.' + n) for n in names)


def layer_decay_param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                             decay_rate: float,
                             no_decay: Sequence[str] = DEFAULT_NO_DECAY) -> list[dict]:
    """Parameter groups with lr scaled by ``decay_rate ** (num_layers + 1 - layer_id)`` and
    weight decay 0 on the kinds of parameters ``no_decay`` names.

    Args:
        model: a task model whose ``backbone`` attribute follows densevit's Backbone contract
            (``num_layers``, ``layer_id``, ``no_weight_decay``); other parameters get full lr.
        lr: base learning rate.
        weight_decay: weight decay for parameters that are not exempt.
        decay_rate: per-layer factor, e.g. 0.7 (ViT-B), 0.8 (L), 0.9 (H) in ViTDet.
        no_decay: kinds of parameters that take no weight decay, from ``NO_DECAY_KINDS``.
    """
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'layer_id'):
        raise TypeError(f'layer-wise lr decay needs model.backbone with layer_id(); '
                        f'{type(model).__name__}.backbone is {type(backbone).__name__}')
    kinds = set(_check_no_decay(no_decay))
    num_layers = backbone.num_layers
    tables = set(backbone.no_weight_decay()) if 'tables' in kinds else set()
    if 'pos_embed' in kinds:
        tables |= {n for n in backbone.no_weight_decay() if n.split('.')[-1] == 'pos_embed'}
    norms = (_norm_params(model) if 'norm' in kinds
             else _norm_params(backbone) if 'backbone_norm' in kinds else set())
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = name.startswith('backbone.')
        local = name[len('backbone.'):] if in_backbone else name
        layer = backbone.layer_id(local) if in_backbone else num_layers + 1
        exempt = (id(param) in norms
                  or ('bias' in kinds and name.split('.')[-1] == 'bias')
                  or ('1d' in kinds and param.ndim <= 1)
                  or (in_backbone and _matches(local, tables)))
        scale = decay_rate ** (num_layers + 1 - layer)
        group = groups.setdefault((layer, exempt), dict(
            params=[], lr=lr * scale, lr_scale=scale, layer_id=layer,
            weight_decay=0.0 if exempt else weight_decay))
        group['params'].append(param)
    return [groups[k] for k in sorted(groups)]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``optim_wrapper=dict(constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.7, no_decay=('norm', 'pos_embed')),
    optimizer=dict(type='AdamW', lr=..., weight_decay=...))``; ``no_decay`` names the recipe's
    weight-decay exemptions (``NO_DECAY_KINDS``; default ``('1d', 'tables')``).
    """

    def _validate_cfg(self) -> None:
        unknown = set(self.paramwise_cfg) - {'layer_decay_rate', 'no_decay'}
        if unknown:
            raise KeyError(f'paramwise_cfg keys {sorted(unknown)} are not read by '
                           "LayerDecayOptimWrapperConstructor (it takes 'layer_decay_rate' and "
                           "'no_decay')")
        _check_no_decay(self.paramwise_cfg.get('no_decay', DEFAULT_NO_DECAY))
        if 'layer_decay_rate' not in self.paramwise_cfg:
            raise KeyError('LayerDecayOptimWrapperConstructor needs '
                           'paramwise_cfg=dict(layer_decay_rate=...)')
        if self.base_lr is None or self.base_wd is None:
            raise KeyError('LayerDecayOptimWrapperConstructor needs optimizer lr and weight_decay')

    def add_params(self, params: list[dict], module: nn.Module) -> None:
        groups = layer_decay_param_groups(
            module, lr=self.base_lr, weight_decay=self.base_wd,
            decay_rate=self.paramwise_cfg['layer_decay_rate'],
            no_decay=self.paramwise_cfg.get('no_decay', DEFAULT_NO_DECAY))
        print_log(f'layer-wise lr decay {self.paramwise_cfg["layer_decay_rate"]}: '
                  f'{len(groups)} parameter groups over '
                  f'{module.backbone.num_layers + 2} layer ids', logger='current')
        params.extend(groups)


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """Mixed precision on CPU: bfloat16 autocast around the forward pass.

    mmengine's AmpOptimWrapper asserts a GPU; bfloat16 keeps float32's exponent range, so no loss
    scaling is needed. ``tools/train.py --amp`` picks this wrapper when CUDA is absent.
    """

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield
