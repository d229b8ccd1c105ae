"""Load a (converted) state dict into a model, resizing what changes with the input or window size,
and report missing, unexpected and resized keys in one message; load a backbone checkpoint
completely or fail (``load_backbone_checkpoint``, what the task models' ``backbone_checkpoint``
does)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from timm.layers import resize_rel_pos_bias_table_simple
from torch import nn

from .reading import read_state_dict

__all__ = ['LoadReport', 'load_state_dict', 'load_backbone_checkpoint', 'RESIZERS']

logger = logging.getLogger('densevit')


def _resize_pos_embed(old: torch.Tensor, shape: torch.Size, mode: str = 'bicubic') -> torch.Tensor:
    """Absolute position grid, (1, H, W, C) map or (1, N, C) square token list, resized with
    ``mode`` ('bicubic' or 'bilinear', align_corners=False, no antialiasing: detectron2's
    ``get_abs_pos``, MAE's ``interpolate_pos_embed``, Segmenter's ``resize_pos_embed``)."""
    if old.ndim == 3:  # (1, N, C) -> (1, side, side, C)
        side_old, side_new = math.isqrt(old.shape[1]), math.isqrt(shape[1])
        if side_old ** 2 != old.shape[1] or side_new ** 2 != shape[1]:
            raise ValueError(f'pos_embed of {old.shape[1]} or {shape[1]} tokens is not a square '
                             f'grid')
        grid = _resize_pos_embed(old.reshape(1, side_old, side_old, -1),
                                 torch.Size((1, side_new, side_new, shape[-1])), mode)
        return grid.reshape(1, side_new * side_new, -1)
    # (1, H, W, C) -> (1, C, H, W) -> resize -> (1, H', W', C)
    resized = F.interpolate(old.permute(0, 3, 1, 2).float(), size=tuple(shape[1:3]), mode=mode,
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).to(old.dtype)


def _resize_rel_pos(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Decomposed relative position table (2S-1, C), resized linearly along the offsets."""
    # (2S-1, C) -> (1, C, 2S-1) -> (1, C, 2S'-1) -> (2S'-1, C)
    resized = F.interpolate(old.t()[None].float(), size=shape[0], mode='linear',
                            align_corners=False)
    return resized[0].t().to(old.dtype)


def _resize_bias_table(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Swin relative position bias table ((2W-1)^2, heads), resized bicubically as a
    (2W-1) x (2W-1) grid per head, as the official Swin and mmseg load it."""
    new_window = (math.isqrt(shape[0]) + 1) // 2
    return resize_rel_pos_bias_table_simple(old.float(), new_window_size=(new_window, new_window),
                                            new_bias_shape=tuple(shape)).to(old.dtype)


def _resize_rpb(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Neighborhood-attention relative position bias (heads, 2k-1, 2k-1), resized bicubically."""
    return F.interpolate(old[None].float(), size=tuple(shape[1:]), mode='bicubic',
                         align_corners=False)[0].to(old.dtype)


# Parameter-name suffix -> how to resize it when the model's shape differs from the checkpoint's.
RESIZERS: dict[str, Callable[[torch.Tensor, torch.Size], torch.Tensor]] = {
    'pos_embed': _resize_pos_embed,
    'rel_pos_h': _resize_rel_pos,
    'rel_pos_w': _resize_rel_pos,
    'relative_position_bias_table': _resize_bias_table,
    'rpb': _resize_rpb,
}


@dataclass
class LoadReport:
    """What a load did: keys the model lacked in the file, keys the model does not have, keys whose
    tensors were resized (name -> (old shape, new shape))."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected)

    def __str__(self) -> str:
        lines = [f'missing keys ({len(self.missing)}): {", ".join(self.missing) or "none"}',
                 f'unexpected keys ({len(self.unexpected)}): {", ".join(self.unexpected) or "none"}',
                 f'resized keys ({len(self.resized)}): ' + (', '.join(
                     f'{k} {list(a)}->{list(b)}' for k, (a, b) in self.resized.items()) or 'none')]
        return '\n'.join(lines)


def _owner(model: nn.Module, key: str) -> nn.Module:
    """The module holding parameter ``key`` (the model itself for a top-level one)."""
    path = key.rpartition('.')[0]
    return model.get_submodule(path) if path else model


def _prepare(model: nn.Module, state_dict: Mapping[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The tensors to load (resized where the model's shape differs) and the report; nothing is
    loaded yet."""
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key].shape
        if value.shape != target:
            suffix = key.rsplit('.', 1)[-1]
            resize = RESIZERS.get(suffix)
            if resize is None:
                raise ValueError(f'checkpoint key {key!r} has shape {list(value.shape)}, the model '
                                 f'expects {list(target)}, and no resizer handles {suffix!r} '
                                 f'(resizable: {sorted(RESIZERS)})')
            if suffix == 'pos_embed':  # the model's own interpolation (Segmenter: bilinear)
                mode = getattr(_owner(model, key), 'pos_embed_interpolation', 'bicubic')
                value = _resize_pos_embed(value, target, mode)
            else:
                value = resize(value, target)
            report.resized[key] = (tuple(state_dict[key].shape), tuple(target))
        to_load[key] = value
    report.missing = [k for k in own if k not in state_dict]
    return to_load, report


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                    strict: bool = False, log: bool = True) -> LoadReport:
    """Load ``state_dict`` into ``model``, resizing position embeddings and relative position
    tables whose shapes differ (see ``RESIZERS``).

    Args:
        model: the module to load into (e.g. a backbone).
        state_dict: keys in the model's own naming (run a converter first).
        strict: raise if any key is missing or unexpected (the report is in the message).
        log: log the report at INFO level.

    Raises:
        ValueError: a tensor's shape differs and no resizer knows its name, or ``strict`` and the
            key sets differ.
    """
    to_load, report = _prepare(model, state_dict)
    if strict and not report.clean:
        raise ValueError(f'state dict does not match {type(model).__name__}:\n{report}')
    model.load_state_dict(to_load, strict=False)
    if log:
        logger.info('loaded state dict into %s:\n%s', type(model).__name__, report)
    return report


def _first(keys: list[str]) -> str:
    return f'{len(keys)} (first: {keys[0]!r})' if keys else '0'


def load_backbone_checkpoint(checkpoint: str | Mapping[str, torch.Tensor], backbone: nn.Module,
                             neck: nn.Module | None = None) -> LoadReport:
    """Load a converted backbone checkpoint into ``backbone`` (and ``neck``) completely, or raise.

    Two layouts are read: the backbone's own names (what the backbone converters write: timm_vit,
    mae, deit, swin, nat, dinat, resnet, segmenter from a timm file), or whole-model names (vitdet,
    sam, segmenter from an official file, a densevit training checkpoint), of which ``backbone.*``
    goes to the backbone and ``neck.*`` to the neck, prefixes stripped; keys of other parts
    (heads, prompt encoder, ...) are not read from a backbone checkpoint.

    The backbone must take the file exactly, up to what it declares: keys it may lack
    (``checkpoint_optional_keys()``, e.g. Swin's output norms) and keys it drops
    (``checkpoint_ignored_keys()``, e.g. a ViT's final norm it does not have). Neck keys, when
    the file has any, must fit the neck exactly. Nothing is loaded unless everything fits.

    Args:
        checkpoint: a file path (``read_state_dict`` reads it) or a state dict.
        backbone: the task model's backbone.
        neck: its neck (a module or an ``nn.ModuleList`` chain), or None.

    Returns:
        The backbone's load report (resized keys included); also logged at INFO.

    Raises:
        ValueError: the file does not fit, naming the first missing and unexpected keys.
    """
    source = checkpoint if isinstance(checkpoint, str) else 'backbone state dict'
    state = read_state_dict(checkpoint) if isinstance(checkpoint, str) else dict(checkpoint)
    parts: dict[str, dict[str, torch.Tensor]] = {'backbone': {}, 'neck': {}}
    skipped: list[str] = []
    if any(k.startswith(('backbone.', 'neck.')) for k in state):
        for key, value in state.items():
            part, _, rest = key.partition('.')
            if part in parts:
                parts[part][rest] = value
            else:
                skipped.append(key)
    else:
        parts['backbone'] = state
    name = type(backbone).__name__
    if not parts['backbone']:
        raise ValueError(f'{source}: no backbone keys (first keys: {list(state)[:4]}); convert '
                         f'the official file with tools/convert_checkpoint.py first')
    to_load, report = _prepare(backbone, parts['backbone'])
    optional = getattr(backbone, 'checkpoint_optional_keys', set)()
    ignored = getattr(backbone, 'checkpoint_ignored_keys', set)()
    missing = [k for k in report.missing if k not in optional]
    unexpected = [k for k in report.unexpected if k not in ignored]
    if missing or unexpected:
        raise ValueError(
            f'{source} does not fit the {name} backbone: missing keys {_first(missing)}, '
            f'unexpected keys {_first(unexpected)}. Convert the official file with '
            f'tools/convert_checkpoint.py KIND, and check the backbone settings the file needs '
            f'(arch, final_norm, class_token, layer_scale, ...)')
    neck_load = None
    if parts['neck']:
        if neck is None:
            raise ValueError(f'{source} holds neck weights ({_first(list(parts["neck"]))}) but '
                             f'the model has no neck; drop them or add the neck they belong to')
        neck_load, neck_report = _prepare(neck, parts['neck'])
        if not neck_report.clean:
            raise ValueError(
                f'{source} does not fit the {type(neck).__name__} neck: missing keys '
                f'{_first(neck_report.missing)}, unexpected keys '
                f'{_first(neck_report.unexpected)}')
    backbone.load_state_dict(to_load, strict=False)
    if neck_load is not None:
        neck.load_state_dict(neck_load, strict=True)
    logger.info('loaded %s into the %s backbone%s:\n%s%s', source, name,
                ' and its neck' if neck_load is not None else '', report,
                f'\nnot read (other parts): {_first(skipped)}' if skipped else '')
    return report
