"""Point sampling for mask costs and mask losses, as PointRend / Mask2Former / Mask DINO do.

Mask logits at stride 4 and gt masks at full resolution cover the same padded frame, so sampling
both at the same normalised coordinates compares them without upsampling anything. detectron2's
``point_features`` module holds these two functions; densevit does not depend on detectron2, so
they are written here on top of ``F.grid_sample``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ['point_sample', 'uncertain_point_coords']


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``maps`` at normalised points (``align_corners=False``: 0 and 1 are the
    outer edges of the map, so maps of any resolution over the same frame agree).

    Args:
        maps: (N, C, H, W).
        coords: (N, P, 2) in [0, 1], (x, y) order.

    Returns:
        (N, C, P).
    """
    if coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != maps.shape[0]:
        raise ValueError(f'coords must be (N, P, 2) with N = {maps.shape[0]} '
                         f'(got {tuple(coords.shape)})')
    # (N, P, 2) -> (N, P, 1, 2) in grid_sample's [-1, 1] frame
    grid = (2.0 * coords - 1.0)[:, :, None].to(maps.dtype)
    # (N, C, P, 1) -> (N, C, P)
    return F.grid_sample(maps, grid, mode='bilinear', align_corners=False)[..., 0]


@torch.no_grad()
def uncertain_point_coords(logits: torch.Tensor, *, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float) -> torch.Tensor:
    """Points biased towards uncertain mask logits (PointRend training sampling, as Mask2Former's
    ``get_uncertain_point_coords_with_randomness``): draw ``num_points * oversample_ratio`` uniform
    points, keep the ``importance_sample_ratio * num_points`` whose logit is closest to 0, fill the
    rest with fresh uniform points.

    Args:
        logits: (N, 1, H, W) mask logits.
        num_points: points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].

    Returns:
        (N, num_points, 2) in [0, 1], (x, y) order.
    """
    if oversample_ratio < 1:
        raise ValueError(f'oversample_ratio must be >= 1 (got {oversample_ratio})')
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError('importance_sample_ratio must be in [0, 1] '
                         f'(got {importance_sample_ratio})')
    num_masks = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = torch.rand(num_masks, num_sampled, 2, device=logits.device)
    # uncertainty = -|logit|: the highest where the mask is least decided
    uncertainty = -point_sample(logits.float(), coords)[:, 0].abs()  # (N, num_sampled)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    # (N, num_uncertain) -> (N, num_uncertain, 2)
    coords = coords.gather(1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(num_masks, num_random, 2, device=logits.device)],
                           dim=1)
    return coords
