"""Sine position encodings of the DETR family: of a padded feature map, and of boxes / points.

``sine_position_embedding(padding_mask)`` is DETR's ``PositionEmbeddingSine``: the position of a
pixel is the cumulative count of NOT-padded pixels along each axis, so a pixel inside the image
gets the same code whatever padding follows it. With ``normalize`` the counts are divided by the
valid extent of that row / column and scaled to (0, 2 pi]. Deformable DETR subtracts 0.5 from the
counts before normalising (``offset=-0.5``); DINO uses ``temperature=20`` for both axes.

``coordinate_sine_embedding(coords)`` embeds normalised coordinates per query: DINO's
``gen_sineembed_for_position`` (order y, x[, w, h]; ``swap_xy=True``) and Deformable DETR's
two-stage ``get_proposal_pos_embed`` (order as given, x, y, w, h, applied to sigmoid(proposals);
``swap_xy=False``).

Both share one 1-d code: for a value ``p`` and ``num_pos_feats = F``, feature ``2k`` is
``sin(p / T ** (2k / F))`` and feature ``2k + 1`` is ``cos(p / T ** (2k / F))``.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ['resize_padding_mask', 'sine_position_embedding', 'coordinate_sine_embedding']

Temperature = Union[float, Sequence[float]]


def resize_padding_mask(padding_mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The (B, Hp, Wp) bool padding mask (True = padded) resized to a feature map's (h, w).

    Nearest-neighbour, as DETR's backbone joiner does; the first row and column always sample
    pixel 0, so an image never loses all of its valid positions.
    """
    if padding_mask.dim() != 3 or padding_mask.dtype != torch.bool:
        raise ValueError(f'padding_mask must be a (B, H, W) bool tensor, got '
                         f'{tuple(padding_mask.shape)} {padding_mask.dtype}')
    if tuple(padding_mask.shape[-2:]) == tuple(size):
        return padding_mask
    # (B, Hp, Wp) -> (B, 1, Hp, Wp) -> (B, 1, h, w) -> (B, h, w)
    return F.interpolate(padding_mask[:, None].float(), size=tuple(size))[:, 0].bool()


def _inverse_frequencies(num_pos_feats: int, temperature: float,
                         device: torch.device) -> torch.Tensor:
    """(F,) divisors T ** (2 * (i // 2) / F): one frequency per sin / cos pair."""
    if num_pos_feats <= 0 or num_pos_feats % 2:
        raise ValueError(f'num_pos_feats must be a positive even number (sin / cos pairs), got '
                         f'{num_pos_feats}')
    index = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode='floor') / num_pos_feats)


def _sine(values: torch.Tensor, divisors: torch.Tensor) -> torch.Tensor:
    """(...,) values -> (..., F): sin on even features, cos on odd ones, interleaved."""
    phase = values[..., None] / divisors  # (..., F)
    # (..., F/2) sin and (..., F/2) cos -> (..., F/2, 2) -> (..., F)
    return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_position_embedding(padding_mask: torch.Tensor, *, num_pos_feats: int = 128,
                            temperature: Temperature = 10000.0, normalize: bool = True,
                            scale: float = 2 * math.pi, offset: float = 0.0,
                            eps: float = 1e-6) -> torch.Tensor:
    """DETR's sine position embedding of a padded feature map.

    Args:
        padding_mask: (B, H, W) bool, True = padded position (already at the map's size).
        num_pos_feats: features per axis; the output has 2 * num_pos_feats channels (y, then x).
        temperature: T of the frequencies, one value or (T_y, T_x) as DINO's
            PositionEmbeddingSineHW.
        normalize: divide the cumulative counts by the valid extent of the row / column.
        scale: the normalised positions are scaled to (0, scale].
        offset: added to the counts before normalising (-0.5 in Deformable DETR, 0 in DETR / DINO).
        eps: guards the division.

    Returns:
        (B, 2 * num_pos_feats, H, W) float32.
    """
    if padding_mask.dim() != 3 or padding_mask.dtype != torch.bool:
        raise ValueError(f'padding_mask must be a (B, H, W) bool tensor, got '
                         f'{tuple(padding_mask.shape)} {padding_mask.dtype}')
    if isinstance(temperature, (int, float)):
        temp_y = temp_x = float(temperature)
    else:
        temp_y, temp_x = (float(t) for t in temperature)
    not_mask = ~padding_mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W): valid rows so far
    x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, H, W): valid columns so far
    if normalize:
        # the last row / column holds the valid extent of each column / row
        y_embed = (y_embed + offset) / (y_embed[:, -1:, :] + eps) * scale
        x_embed = (x_embed + offset) / (x_embed[:, :, -1:] + eps) * scale
    device = padding_mask.device
    pos_y = _sine(y_embed, _inverse_frequencies(num_pos_feats, temp_y, device))  # (B, H, W, F)
    pos_x = _sine(x_embed, _inverse_frequencies(num_pos_feats, temp_x, device))  # (B, H, W, F)
    # (B, H, W, 2F) -> (B, 2F, H, W)
    return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


def coordinate_sine_embedding(coords: torch.Tensor, *, num_pos_feats: int = 128,
                              temperature: float = 10000.0, scale: float = 2 * math.pi,
                              swap_xy: bool = True) -> torch.Tensor:
    """Sine embedding of normalised points (x, y) or boxes (cx, cy, w, h), one code per coordinate.

    Args:
        coords: (..., 2) or (..., 4) in [0, 1] (sigmoid already applied).
        num_pos_feats: features per coordinate.
        temperature: T of the frequencies.
        scale: coordinates are multiplied by it first.
        swap_xy: True puts y before x, as DINO / DAB-DETR's ``gen_sineembed_for_position``
            (output y, x[, w, h]); False keeps the input order, as Deformable DETR's
            ``get_proposal_pos_embed`` (x, y[, w, h]).

    Returns:
        (..., coords.shape[-1] * num_pos_feats).
    """
    if coords.shape[-1] not in (2, 4):
        raise ValueError(f'coords must end in 2 (x, y) or 4 (cx, cy, w, h) values, got shape '
                         f'{tuple(coords.shape)}')
    divisors = _inverse_frequencies(num_pos_feats, temperature, coords.device)
    codes = _sine(coords.float() * scale, divisors)  # (..., 2 or 4, F)
    if swap_xy:
        order = [1, 0, 2, 3][:coords.shape[-1]]
        codes = codes[..., order, :]
    return codes.flatten(-2)  # (..., 2 or 4, F) -> (..., (2 or 4) * F)
