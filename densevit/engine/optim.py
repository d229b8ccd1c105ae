"""Layer-wise learning-rate decay, with layer ids reported by the backbone itself.

mmengine's DefaultOptimWrapperConstructor has per-name multipliers but no notion of depth; ViTDet,
BEiT and MAE fine-tuning scale each layer's lr by ``rate ** (num_layers + 1 - layer_id)``. The
backbone says which layer a parameter belongs to (``Backbone.layer_id``), so no config carries
parameter-name regexes.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from densevit.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

__all__ = ['LayerDecayOptimWrapperConstructor', 'layer_decay_param_groups',
           'CPUAutocastOptimWrapper']


def _exempt_from_decay(name: str, param: nn.Parameter, no_decay: set[str]) -> bool:
    """Norm weights, biases and the backbone's named tables (exact names or name suffixes)."""
    return param.ndim <= 1 or any(name == n or name.endswith('.' + n) for n in no_decay)


def layer_decay_param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                             decay_rate: float) -> list[dict]:
    """Parameter groups with lr scaled by ``decay_rate ** (num_layers + 1 - layer_id)``.

    Args:
        model: a task model whose ``backbone`` attribute follows densevit's Backbone contract
            (``num_layers``, ``layer_id``, ``no_weight_decay``); other parameters get full lr.
        lr: base learning rate.
        weight_decay: weight decay for parameters that are not exempt (norms, biases, position
            embeddings, relative position tables take none).
        decay_rate: per-layer factor, e.g. 0.7 (ViT-B), 0.8 (L), 0.9 (H) in ViTDet.
    """
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'layer_id'):
        raise TypeError(f'layer-wise lr decay needs model.backbone with layer_id(); '
                        f'{type(model).__name__}.backbone is {type(backbone).__name__}')
    num_layers = backbone.num_layers
    no_decay = set(backbone.no_weight_decay())
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith('backbone.'):
            local = name[len('backbone.'):]
            layer = backbone.layer_id(local)
            exempt = _exempt_from_decay(local, param, no_decay)
        else:
            layer, exempt = num_layers + 1, param.ndim <= 1
        scale = decay_rate ** (num_layers + 1 - layer)
        group = groups.setdefault((layer, exempt), dict(
            params=[], lr=lr * scale, lr_scale=scale, layer_id=layer,
            weight_decay=0.0 if exempt else weight_decay))
        group['params'].append(param)
    return [groups[k] for k in sorted(groups)]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``optim_wrapper=dict(constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.7), optimizer=dict(type='AdamW', lr=..., weight_decay=...))``.
    """

    def _validate_cfg(self) -> None:
        unknown = set(self.paramwise_cfg) - {'layer_decay_rate'}
        if unknown:
            raise KeyError(f'paramwise_cfg keys {sorted(unknown)} are not read by '
                           "LayerDecayOptimWrapperConstructor (it takes 'layer_decay_rate')")
        if 'layer_decay_rate' not in self.paramwise_cfg:
            raise KeyError('LayerDecayOptimWrapperConstructor needs '
                           'paramwise_cfg=dict(layer_decay_rate=...)')
        if self.base_lr is None or self.base_wd is None:
            raise KeyError('LayerDecayOptimWrapperConstructor needs optimizer lr and weight_decay')

    def add_params(self, params: list[dict], module: nn.Module) -> None:
        groups = layer_decay_param_groups(module, lr=self.base_lr, weight_decay=self.base_wd,
                                          decay_rate=self.paramwise_cfg['layer_decay_rate'])
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
