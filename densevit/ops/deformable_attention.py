"""Multi-scale deformable attention (Deformable DETR, Zhu et al., 2021) in pure PyTorch.

``multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)``
takes the layout of Deformable DETR's ``ms_deform_attn_core_pytorch`` and samples as its CUDA
kernel does: bilinear, ``align_corners=False`` pixel centres, zeros outside the map. Every query
reads ``points`` bilinear samples per level and head and returns their weighted sum. Sampling and
its backward are ``F.grid_sample``'s kernels; there is no compiled op.

Unlike the reference, which stacks every level's samples into one (B*heads, head_dim, Q, L*P)
tensor before weighting them, the op loops over images and levels: one ``grid_sample`` call samples
all heads and points of a level of one image, the samples are weighted, and their sum over the
points is added into the (heads, head_dim, Q) accumulator by one matrix-vector product with ones
(BLAS addmv: no zero fill, no temporary, one call). Only that level's samples are alive besides the
accumulator (with gradients, every level's samples are kept for the weights' gradient, as autograd
keeps them for the reference). Nor does it copy ``value`` into grid_sample's (N, C, H, W) layout
as the reference does: with the heads as N, a level of one image is a channels-last view of
``value``, which grid_sample reads as it is (and faster: each corner's head_dim values are
consecutive in memory).

The loop is written for few multi-threaded kernels, because every such kernel ends at a barrier,
and on a machine shared with other work each may wait a scheduler slice for its second thread:
without gradients the weights are multiplied into the samples in place; with them, a hand-written
backward (``_SampleFunction``) writes each level's gradients straight into the gradients' final
layouts instead of autograd's per-level stacks, cats and sums.

``MultiScaleDeformableAttention`` is the module around it, with the official submodule names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) and initialisation.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ['multi_scale_deformable_attention', 'MultiScaleDeformableAttention']

SpatialShapes = Union[torch.Tensor, Sequence[Sequence[int]]]


def _level_shapes(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """(L, 2) tensor or sequence of (H, W) -> list of int pairs (syncs once for a CUDA tensor)."""
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f'multi_scale_deformable_attention: spatial_shapes must be (levels, '
                             f'2) as (H, W), got shape {tuple(spatial_shapes.shape)}')
        if spatial_shapes.is_floating_point() or spatial_shapes.is_complex():
            raise ValueError(f'multi_scale_deformable_attention: spatial_shapes must hold integers '
                             f'(torch.long), got {spatial_shapes.dtype}')
        spatial_shapes = spatial_shapes.tolist()
    shapes = [tuple(shape) for shape in spatial_shapes]
    if not shapes or any(len(s) != 2 or any(int(n) != n or n < 1 for n in s) for s in shapes):
        raise ValueError(f'multi_scale_deformable_attention: spatial_shapes must be a non-empty '
                         f'(levels, 2) list of positive (H, W), got {spatial_shapes!r}')
    return [(int(h), int(w)) for h, w in shapes]


def _check(value: torch.Tensor, shapes: list[tuple[int, int]], sampling_locations: torch.Tensor,
           attention_weights: torch.Tensor) -> None:
    name = 'multi_scale_deformable_attention'
    if value.dim() != 4:
        raise ValueError(f'{name}: value must be (B, sum of H*W, heads, head_dim), got shape '
                         f'{tuple(value.shape)}')
    bsz, total, heads, _ = value.shape
    if sum(h * w for h, w in shapes) != total:
        raise ValueError(f'{name}: value has {total} positions but spatial_shapes {shapes} hold '
                         f'{sum(h * w for h, w in shapes)} (sum of H*W)')
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f'{name}: sampling_locations must be (B, queries, heads, levels, points, '
                         f'2), got shape {tuple(sampling_locations.shape)}')
    b, queries, h, levels, points, _ = sampling_locations.shape
    want = (bsz, queries, heads, len(shapes), points, 2)
    if (b, h, levels) != (bsz, heads, len(shapes)):
        raise ValueError(f'{name}: sampling_locations shape {tuple(sampling_locations.shape)} '
                         f'does not fit value (B={bsz}, heads={heads}) and {len(shapes)} levels; '
                         f'expected {want}')
    if tuple(attention_weights.shape) != want[:-1]:
        raise ValueError(f'{name}: attention_weights must have shape (B, queries, heads, levels, '
                         f'points) = {want[:-1]}, got {tuple(attention_weights.shape)}')
    for arg, t in (('value', value), ('sampling_locations', sampling_locations),
                   ('attention_weights', attention_weights)):
        if not t.is_floating_point():
            raise ValueError(f'{name}: {arg} must be a float tensor, got {t.dtype}')
        if t.device != value.device:
            raise ValueError(f'{name}: {arg} is on {t.device}, value on {value.device}; they '
                             f'must be on one device')


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes: SpatialShapes,
                                     sampling_locations: torch.Tensor,
                                     attention_weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear samples of several feature maps, per query and head.

    Args:
        value: (B, S, heads, head_dim), the levels' maps flattened row-major and concatenated,
            S = sum of H_l * W_l. Contiguous is the fast layout (other strides are copied once).
        spatial_shapes: (levels, 2) integer tensor or sequence of (H_l, W_l).
        sampling_locations: (B, queries, heads, levels, points, 2), (x, y) normalised to [0, 1]
            over each level's map; (0, 0) is the top-left corner of the top-left pixel. Points
            outside the map read zeros (corners outside count as 0), as the CUDA kernel does.
        attention_weights: (B, queries, heads, levels, points), used as given (the caller
            normalises them, usually by a softmax over levels * points).

    Returns:
        (B, queries, heads * head_dim), heads-major as the reference, in the widest dtype of
        the three inputs.
    """
    shapes = _level_shapes(spatial_shapes)
    _check(value, shapes, sampling_locations, attention_weights)
    # mixed dtypes (under autocast: a bf16 value, float32 locations) run in the widest, as
    # autocast promotes grid_sample's inputs
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype),
                                attention_weights.dtype)
    value, sampling_locations, attention_weights = (
        t.to(dtype) for t in (value, sampling_locations, attention_weights))
    grids, weights = _grids_and_weights(sampling_locations, attention_weights)
    if torch.is_grad_enabled() and any(
            t.requires_grad for t in (value, sampling_locations, attention_weights)):
        # a strided value is copied once here, so that backward writes one contiguous gradient
        return _SampleFunction.apply(value.contiguous(), grids, weights, shapes)
    return _sample(value, shapes, grids, weights)


def _level_pieces(value: torch.Tensor, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
    """(B, S, heads, E) -> B*L pieces (H_l*W_l, heads, E), image-major, views (of a contiguous
    value); backward writes value's gradient through the same views of its gradient."""
    bsz, total, heads, dim = value.shape
    return value.reshape(bsz * total, heads, dim).split([h * w for h, w in shapes] * bsz)


def _as_map(piece: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(H*W, heads, E) -> (H, W, heads, E) -> (heads, E, H, W), a channels-last view: no copy, and
    grid_sample gathers each corner's head_dim values from consecutive memory."""
    return piece.unflatten(0, shape).permute(2, 3, 0, 1)


def _grids_and_weights(sampling_locations: torch.Tensor,
                       attention_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs in the loop's order, image-major: B*L grids (heads, Q, P, 2) in grid_sample's
    [-1, 1] and B*L weights (heads, Q, P), each contiguous (grid_sample reads a strided grid at
    half the speed)."""
    # [0, 1] -> [-1, 1] as -1 + 2 * x in one kernel; (B, Q, heads, L, P, 2) -> (B, L, heads, Q, P,
    # 2) -> (B*L, heads, Q, P, 2)
    grids = torch.add(sampling_locations.new_tensor(-1.0), sampling_locations, alpha=2)
    grids = grids.permute(0, 3, 2, 1, 4, 5).flatten(0, 1)
    # (B, Q, heads, L, P) -> (B, L, heads, Q, P) -> (B*L, heads, Q, P)
    return grids, attention_weights.permute(0, 3, 2, 1, 4).flatten(0, 1)


def _sample(value: torch.Tensor, shapes: list[tuple[int, int]], grids: torch.Tensor,
            weights: torch.Tensor, samples: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
    """The forward, outside autograd: (B, Q, heads*E). Without ``samples`` the weights are
    multiplied into each level's samples in place; with it the samples are kept there (for the
    weights' gradient) and the weighted copy is a temporary."""
    bsz, _, heads, dim = value.shape
    levels = len(shapes)
    queries, points = grids.shape[2], grids.shape[3]
    ones = value.new_ones(points)
    out = value.new_empty(bsz, heads, dim, queries)
    for index, piece in enumerate(_level_pieces(value, shapes)):
        image, level = divmod(index, levels)
        sampled = F.grid_sample(_as_map(piece, shapes[level]), grids[index], mode='bilinear',
                                padding_mode='zeros', align_corners=False)  # (heads, E, Q, P)
        if samples is None:
            weighted = sampled.mul_(weights[index][:, None])
        else:
            samples.append(sampled)
            weighted = sampled * weights[index][:, None]
        # (heads, E, Q, P) -> (heads*E*Q, P) against ones -> (heads*E*Q,), added into out[image]
        accumulator = out[image].view(-1)
        if level:
            accumulator.addmv_(weighted.view(-1, points), ones)
        else:
            torch.mv(weighted.view(-1, points), ones, out=accumulator)
    # (B, heads, E, Q) -> (B, heads*E, Q) -> (B, Q, heads*E)
    return out.flatten(1, 2).transpose(1, 2).contiguous()


class _SampleFunction(torch.autograd.Function):
    """``_sample`` with a backward that writes each image-level's gradients straight into their
    final layouts: value's through ``grid_sampler_2d_backward`` and one copy, the locations' as
    twice the grid's (the [0, 1] -> [-1, 1] map), the weights' as the samples' dot products with
    the output gradient over head_dim."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grids: torch.Tensor, weights: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        samples: list[torch.Tensor] = []
        out = _sample(value, shapes, grids, weights, samples)
        ctx.shapes = shapes
        ctx.save_for_backward(value, grids, weights, *samples)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        value, grids, weights, *samples = ctx.saved_tensors
        shapes = ctx.shapes
        need_value, need_grids, need_weights = ctx.needs_input_grad[:3]
        bsz, _, heads, dim = value.shape
        levels = len(shapes)
        queries = grids.shape[2]
        # (B, Q, heads*E) -> (B, Q, heads, E) -> (B, heads, E, Q, 1), against (heads, E, Q, P)
        grad = grad_output.reshape(bsz, queries, heads, dim).permute(0, 2, 3, 1).contiguous()
        grad = grad[..., None]
        grad_value = grad_grids = grad_weights = None
        if need_value:
            grad_value = torch.empty_like(value)
            value_grads = _level_pieces(grad_value, shapes)
        if need_grids:
            grad_grids = torch.empty_like(grids)
        if need_weights:
            # contiguous whatever the weights' strides, so each (image-level, head) row is a view
            grad_weights = weights.new_empty(weights.shape)
            ones = weights.new_ones(dim)
        for index, piece in enumerate(_level_pieces(value, shapes)):
            image, level = divmod(index, levels)
            if need_value or need_grids:
                grad_map, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                    grad[image] * weights[index][:, None], _as_map(piece, shapes[level]),
                    grids[index], 0, 0, False, [need_value, need_grids])  # bilinear, zeros
                if need_value:  # (heads, E, H, W) -> (H, W, heads, E) -> (H*W, heads, E)
                    value_grads[index].copy_(grad_map.permute(2, 3, 0, 1).flatten(0, 1))
                if need_grids:
                    grad_grids[index] = grad_grid
            if need_weights:
                # (heads, E, Q, P) * (heads, E, Q, 1), summed over E per head as (Q*P, E)
                # against ones: BLAS calls, no zero fill
                products = (samples[index] * grad[image]).flatten(2)  # (heads, E, Q*P)
                for head in range(heads):
                    torch.mv(products[head].t(), ones, out=grad_weights[index, head].view(-1))
        return grad_value, grad_grids, grad_weights, None


class MultiScaleDeformableAttention(nn.Module):
    """Deformable DETR's MSDeformAttn: each query predicts ``num_points`` sampling offsets and
    attention weights per head and level around its reference point and attends to the bilinear
    samples of ``value`` there.

    Args:
        embed_dim: width of query, value and output; divisible by ``num_heads``.
        num_heads: attention heads.
        num_levels: feature levels in ``value``.
        num_points: sampling points per head and level.
    """

    def __init__(self, *, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'MultiScaleDeformableAttention: embed_dim {embed_dim} must be '
                             f'divisible by num_heads {num_heads}')
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published initialisation: offsets start on a star of ``num_heads`` directions
        (head h at angle 2*pi*h/heads, scaled so the larger coordinate is 1), point p at distance
        p + 1 on every level; uniform attention weights; Xavier-uniform projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)  # (heads, 2) as (x, y)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float64)
        # (heads, 1, 1, 2) * (1, 1, P, 1) -> (heads, L, P, 2)
        grid = (directions[:, None, None] * scale[None, None, :, None]).expand(
            -1, self.num_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: SpatialShapes,
                value_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            query: (B, Q, D), position embedding already added.
            reference_points: (B, Q, L, 2) as (x, y) in [0, 1], offsets are in pixels of each
                level; or (B, Q, L, 4) boxes (cx, cy, w, h), offsets scaled by
                0.5 * (w, h) / num_points.
            value: (B, S, D), the flattened levels, S = sum of H_l * W_l.
            spatial_shapes: (L, 2) long (H_l, W_l), or a sequence of pairs.
            value_padding_mask: optional (B, S) bool, True = padding (read as zeros).

        Returns:
            (B, Q, D).
        """
        bsz, queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        shapes = _level_shapes(spatial_shapes)  # python ints: one host sync for a CUDA tensor
        if len(shapes) != levels:
            raise ValueError(f'MultiScaleDeformableAttention: spatial_shapes must be (num_levels, '
                             f'2) = ({levels}, 2), got {len(shapes)} levels {shapes}')
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (
                bsz, queries, levels) or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f'MultiScaleDeformableAttention: reference_points must be (B, Q, L, '
                             f'2) or (B, Q, L, 4) = ({bsz}, {queries}, {levels}, 2 or 4), got '
                             f'{tuple(reference_points.shape)}')
        if value.dim() != 3 or value.shape[0] != bsz or value.shape[2] != self.embed_dim:
            raise ValueError(f'MultiScaleDeformableAttention: value must be (B, S, D) = ({bsz}, S, '
                             f'{self.embed_dim}), got {tuple(value.shape)}')
        total = value.shape[1]
        if value_padding_mask is not None and tuple(value_padding_mask.shape) != (bsz, total):
            raise ValueError(f'MultiScaleDeformableAttention: value_padding_mask must be (B, S) = '
                             f'({bsz}, {total}), got {tuple(value_padding_mask.shape)}')

        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(bsz, total, heads, -1)  # (B, S, D) -> (B, S, heads, E)

        # (B, Q, D) -> (B, Q, heads, L, P, 2)
        offsets = self.sampling_offsets(query).view(bsz, queries, heads, levels, points, 2)
        # (B, Q, D) -> (B, Q, heads, L*P) -> softmax -> (B, Q, heads, L, P)
        weights = self.attention_weights(query).view(bsz, queries, heads, levels * points)
        weights = weights.softmax(-1).view(bsz, queries, heads, levels, points)
        # reference points (B, Q, L, 2|4) -> (B, Q, 1, L, 1, 2|4) against the offsets
        ref = reference_points[:, :, None, :, None, :]
        if reference_points.shape[-1] == 2:
            normaliser = torch.tensor([(w, h) for h, w in shapes], dtype=offsets.dtype,
                                      device=offsets.device)  # (L, 2) as (W, H)
            locations = ref + offsets / normaliser[:, None, :]
        else:
            locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
        out = multi_scale_deformable_attention(value, shapes, locations, weights)
        return self.output_proj(out)
