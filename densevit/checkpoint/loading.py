"""Load a (converted) state dict into a model, resizing what changes with the input or window size,
and report missing, unexpected and resized keys in one message."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

__all__ = ['LoadReport', 'load_state_dict', 'RESIZERS']

logger = logging.getLogger('densevit')


def _resize_pos_embed(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Absolute position grid, (1, N, C) token list or (1, H, W, C) map, resized bicubically."""
    if old.ndim == 4:  # (1, H, W, C) -> (1, C, H, W) -> resize -> (1, H', W', C)
        resized = F.interpolate(old.permute(0, 3, 1, 2).float(), size=tuple(shape[1:3]),
                                mode='bicubic', align_corners=False)
        return resized.permute(0, 2, 3, 1).to(old.dtype)
    side_old, side_new = int(old.shape[1] ** 0.5), int(shape[1] ** 0.5)
    if side_old ** 2 != old.shape[1] or side_new ** 2 != shape[1]:
        raise ValueError(f'pos_embed of {old.shape[1]} or {shape[1]} tokens is not a square grid')
    return resample_abs_pos_embed(old, [side_new, side_new], num_prefix_tokens=0)


def _resize_rel_pos(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Decomposed relative position table (2S-1, C), resized linearly along the offsets."""
    # (2S-1, C) -> (1, C, 2S-1) -> (1, C, 2S'-1) -> (2S'-1, C)
    resized = F.interpolate(old.t()[None].float(), size=shape[0], mode='linear',
                            align_corners=False)
    return resized[0].t().to(old.dtype)


def _resize_bias_table(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Swin relative position bias table ((2W-1)^2, heads)."""
    new_window = (int(shape[0] ** 0.5) + 1) // 2
    return resize_rel_pos_bias_table(old, new_window_size=(new_window, new_window),
                                     new_bias_shape=tuple(shape))


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
            value = resize(value, target)
            report.resized[key] = (tuple(state_dict[key].shape), tuple(target))
        to_load[key] = value
    report.missing = [k for k in own if k not in state_dict]
    if strict and not report.clean:
        raise ValueError(f'state dict does not match {type(model).__name__}:\n{report}')
    model.load_state_dict(to_load, strict=False)
    if log:
        logger.info('loaded state dict into %s:\n%s', type(model).__name__, report)
    return report
