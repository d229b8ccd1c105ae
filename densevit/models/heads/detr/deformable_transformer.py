"""The deformable transformer shared by the Deformable DETR and DINO heads.

Pieces, in the order a head uses them (shapes with S = sum of H_l * W_l over the L levels):

- ``flatten_levels``: per-level maps, padding masks and position codes -> one token sequence
  (B, S, D) with the level embedding added to the position code, ``spatial_shapes`` (L pairs
  (H_l, W_l) of Python ints) and the ``valid_ratios`` (B, L, 2) of every image at every level.
- ``DeformableEncoder`` of ``DeformableEncoderLayer`` s: multi-scale deformable self-attention
  around one reference point per token (``encoder_reference_points``), post-norm, FFN.
- ``encoder_output_proposals``: two-stage proposals, one box per valid token (centred on it,
  0.05 * 2**level wide), in inverse-sigmoid space; padded or out-of-range tokens get +inf and a
  zeroed memory.
- ``DeformableDecoder`` of ``DeformableDecoderLayer`` s: self-attention (optionally masked, for
  denoising groups), deformable cross-attention at the queries' reference points (scaled by the
  valid ratios), FFN; iterative box refinement when the head passes its ``bbox_embed``, with
  look-forward-twice (DINO) when asked; DINO's query position ``ref_point_head`` from the sine
  code of the 4-d reference and a final ``norm``.

Module and parameter names follow fundamentalvision/Deformable-DETR and IDEA-Research/DINO
(``layers.N.self_attn``, ``cross_attn``, ``norm1..3``, ``linear1/2``, ``ref_point_head``,
``norm``) so the official checkpoints load by renaming only. The arithmetic follows the official
code step by step (reference scaling, ``inverse_sigmoid`` with eps 1e-5, proposal masking and
clamping) so outputs match the reference implementations to float precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from densevit.ops import MultiScaleDeformableAttention

from .detr import MLP
from .position_encoding import coordinate_sine_embedding

__all__ = ['inverse_sigmoid', 'FlatLevels', 'flatten_levels', 'unflatten_levels',
           'valid_ratio', 'encoder_reference_points', 'encoder_output_proposals',
           'DeformableEncoderLayer', 'DeformableEncoder', 'DeformableDecoderLayer',
           'DeformableDecoder', 'reset_transformer_parameters']

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {'relu': F.relu,
                                                                   'gelu': F.gelu}


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f'activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}')
    return _ACTIVATIONS[name]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps (the DETR-family
    definition; the eps matters for parity with the official code)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) padding mask (True = padded) -> (B, 2) fraction (w, h) of the map holding image,
    measured along the first row and column."""
    _, height, width = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)


@dataclass
class FlatLevels:
    """The L pyramid levels as one token sequence.

    Attributes:
        src: (B, S, D) features.
        pos: (B, S, D) position code plus level embedding.
        mask: (B, S) bool, True = padded token.
        spatial_shapes: L pairs (H_l, W_l) of Python ints: the shapes are static, so no consumer
            waits on the device for them, and torch.export sees constants (the values of an
            (L, 2) tensor would be data-dependent there).
        valid_ratios: (B, L, 2) float, (w, h) valid fraction per level.
    """

    src: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    spatial_shapes: tuple[tuple[int, int], ...]
    valid_ratios: torch.Tensor


def flatten_levels(maps: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                   pos_embeds: Sequence[torch.Tensor], level_embed: torch.Tensor) -> FlatLevels:
    """Concatenate the levels' tokens, finest first.

    Args:
        maps: L tensors (B, D, H_l, W_l).
        masks: L bool tensors (B, H_l, W_l), True = padded.
        pos_embeds: L tensors (B, D, H_l, W_l).
        level_embed: (L, D), added to every position code of its level.
    """
    src, mask, pos, shapes = [], [], [], []
    for lvl, (feat, lvl_mask, lvl_pos) in enumerate(zip(maps, masks, pos_embeds)):
        shapes.append(tuple(feat.shape[-2:]))
        src.append(feat.flatten(2).transpose(1, 2))  # (B, D, H, W) -> (B, H*W, D)
        mask.append(lvl_mask.flatten(1))  # (B, H, W) -> (B, H*W)
        pos.append(lvl_pos.flatten(2).transpose(1, 2) + level_embed[lvl].view(1, 1, -1))
    return FlatLevels(src=torch.cat(src, 1), pos=torch.cat(pos, 1), mask=torch.cat(mask, 1),
                      spatial_shapes=tuple(shapes),
                      valid_ratios=torch.stack([valid_ratio(m) for m in masks], 1))


def level_shapes(spatial_shapes: torch.Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(H_l, W_l) pairs of Python ints from an (L, 2) long tensor or a sequence of pairs."""
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def unflatten_levels(tokens: torch.Tensor, spatial_shapes: torch.Tensor) -> list[torch.Tensor]:
    """(B, S, D) tokens -> L maps (B, D, H_l, W_l), the inverse of ``flatten_levels``."""
    shapes = level_shapes(spatial_shapes)
    chunks = tokens.split([h * w for h, w in shapes], dim=1)
    # (B, H*W, D) -> (B, D, H*W) -> (B, D, H, W)
    return [chunk.transpose(1, 2).unflatten(2, shape) for chunk, shape in zip(chunks, shapes)]


def encoder_reference_points(spatial_shapes: torch.Tensor,
                             valid_ratios: torch.Tensor) -> torch.Tensor:
    """Every token's centre as a reference point on every level.

    The centre is normalised by the valid extent of its own level, then multiplied by each
    level's valid ratio (the official order of operations).

    Args:
        spatial_shapes: (H_l, W_l) per level: an (L, 2) long tensor or L pairs.
        valid_ratios: (B, L, 2) (w, h).

    Returns:
        (B, S, L, 2) (x, y) in the padded frame of each level.
    """
    device = valid_ratios.device
    points = []
    for lvl, (height, width) in enumerate(level_shapes(spatial_shapes)):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
            torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
            indexing='ij')
        # (H, W) -> (1, H*W) / (B, 1) -> (B, H*W)
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    reference = torch.cat(points, 1)  # (B, S, 2)
    # (B, S, 1, 2) * (B, 1, L, 2) -> (B, S, L, 2)
    return reference[:, :, None] * valid_ratios[:, None]


def encoder_output_proposals(memory: torch.Tensor, padding_mask: torch.Tensor,
                             spatial_shapes: torch.Tensor,
                             base_size: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage proposals: one box per token, centred on it, ``base_size * 2**level`` wide.

    Centres are normalised by the valid extent of the image at that level. Proposals with any
    coordinate outside (0.01, 0.99), and padded tokens, get +inf logits and a zeroed memory.

    Args:
        memory: (B, S, D) encoder output.
        padding_mask: (B, S) bool, True = padded.
        spatial_shapes: (H_l, W_l) per level: an (L, 2) long tensor or L pairs.
        base_size: box size on the finest level.

    Returns:
        output_memory (B, S, D) with the invalid tokens zeroed, and proposals (B, S, 4) cxcywh in
        inverse-sigmoid space (+inf where invalid).
    """
    bsz = memory.shape[0]
    proposals, start = [], 0
    for lvl, (height, width) in enumerate(level_shapes(spatial_shapes)):
        # (B, H*W) -> (B, H, W, 1)
        lvl_mask = padding_mask[:, start:start + height * width].view(bsz, height, width, 1)
        valid_h = torch.sum(~lvl_mask[:, :, 0, 0], 1)
        valid_w = torch.sum(~lvl_mask[:, 0, :, 0], 1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
            torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
            indexing='ij')
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # (H, W, 2)
        scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(bsz, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(bsz, -1, -1, -1) + 0.5) / scale  # (B, H, W, 2)
        size = torch.ones_like(grid) * base_size * (2.0 ** lvl)
        # (B, H, W, 4) -> (B, H*W, 4)
        proposals.append(torch.cat((grid, size), -1).view(bsz, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask.unsqueeze(-1), float('inf'))
    proposals = proposals.masked_fill(~valid, float('inf'))
    output_memory = memory.masked_fill(padding_mask.unsqueeze(-1), float(0))
    output_memory = output_memory.masked_fill(~valid, float(0))
    return output_memory, proposals


class _FFN(nn.Module):
    """Post-norm feed-forward block; subclasses name the parts as the official layers do."""

    linear1: nn.Linear
    linear2: nn.Linear

    def _ffn(self, x: torch.Tensor, dropout_inner: nn.Module, dropout_out: nn.Module,
             norm: nn.Module) -> torch.Tensor:
        return norm(x + dropout_out(self.linear2(dropout_inner(self.activation(self.linear1(x))))))


class DeformableEncoderLayer(_FFN):
    """Deformable self-attention over all levels, then an FFN; post-norm.

    Args:
        embed_dim: D.
        ffn_dim: hidden width of the FFN.
        dropout: after attention and in the FFN.
        activation: 'relu' or 'gelu'.
        num_heads: attention heads.
        num_levels: L.
        num_points: sampling points per head and level.
    """

    def __init__(self, *, embed_dim: int = 256, ffn_dim: int = 1024, dropout: float = 0.1,
                 activation: str = 'relu', num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(embed_dim=embed_dim, num_heads=num_heads,
                                                       num_levels=num_levels,
                                                       num_points=num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, ffn_dim)
        self.activation = _activation(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor,
                padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """src, pos (B, S, D); reference_points (B, S, L, 2); padding_mask (B, S) -> (B, S, D)."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        return self._ffn(src, self.dropout2, self.dropout3, self.norm2)


class DeformableEncoder(nn.Module):
    """A stack of deformable encoder layers sharing one set of reference points.

    Args:
        layers: the encoder layers, applied in order.
    """

    def __init__(self, *, layers: Sequence[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(self.layers)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: torch.Tensor,
                valid_ratios: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos (B, S, D); valid_ratios (B, L, 2); padding_mask (B, S) -> memory (B, S, D)."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
        return src


class DeformableDecoderLayer(_FFN):
    """Self-attention among the queries, deformable cross-attention into the memory, FFN;
    post-norm (``norm2``, ``norm1``, ``norm3`` in that order, as the official layer names them).

    Args:
        embed_dim: D.
        ffn_dim: hidden width of the FFN.
        dropout: after each block and inside self-attention.
        activation: 'relu' or 'gelu'.
        num_heads: heads of both attentions.
        num_levels: L.
        num_points: sampling points per head and level.
    """

    def __init__(self, *, embed_dim: int = 256, ffn_dim: int = 1024, dropout: float = 0.1,
                 activation: str = 'relu', num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(embed_dim=embed_dim, num_heads=num_heads,
                                                        num_levels=num_levels,
                                                        num_points=num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout,
                                               batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, ffn_dim)
        self.activation = _activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: torch.Tensor, memory_padding_mask: Optional[torch.Tensor],
                self_attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            tgt, query_pos: (B, Q, D) content and position of the queries.
            reference_points: (B, Q, L, 2 or 4), already scaled by the valid ratios.
            memory: (B, S, D); memory_padding_mask: (B, S) bool, True = padded.
            self_attn_mask: optional (Q, Q) bool, True = may NOT attend.

        Returns:
            (B, Q, D).
        """
        q = k = tgt + query_pos
        attn = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                               memory_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attn))
        return self._ffn(tgt, self.dropout3, self.dropout4, self.norm3)


class DeformableDecoder(nn.Module):
    """A stack of deformable decoder layers with optional iterative box refinement.

    Deformable DETR: no ``norm``; the query position is given (``query_embed`` or the two-stage
    ``pos_trans``). DINO: ``norm`` on every layer's output (the returned hidden states; the box
    update inside the loop uses the un-normed output, as the official code) and the query
    position from ``ref_point_head`` on the sine code of each layer's 4-d reference.

    Args:
        layers: the decoder layers, applied in order.
        embed_dim: D.
        final_norm: build ``norm`` (DINO).
        query_pos_from_reference: build ``ref_point_head = MLP(2 D, D, D, 2)`` (DINO).
        inverse_sigmoid_eps: clamp of ``inverse_sigmoid`` in the box refinement (1e-5 in
            Deformable DETR and Mask DINO, 1e-3 in DINO and detrex).
    """

    def __init__(self, *, layers: Sequence[DeformableDecoderLayer], embed_dim: int,
                 final_norm: bool = False, query_pos_from_reference: bool = False,
                 inverse_sigmoid_eps: float = 1e-5) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(self.layers)
        self.embed_dim = embed_dim
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        self.norm = nn.LayerNorm(embed_dim) if final_norm else None
        self.ref_point_head = (MLP(2 * embed_dim, embed_dim, embed_dim, 2)
                               if query_pos_from_reference else None)

    def forward(self, tgt: torch.Tensor, reference_points: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor,
                memory_padding_mask: Optional[torch.Tensor],
                query_pos: Optional[torch.Tensor] = None,
                self_attn_mask: Optional[torch.Tensor] = None,
                bbox_embed: Optional[Sequence[nn.Module]] = None,
                look_forward_twice: bool = False
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """
        Args:
            tgt: (B, Q, D) initial content queries.
            reference_points: (B, Q, 2) points or (B, Q, 4) boxes, sigmoid space, unscaled.
            memory: (B, S, D); memory_padding_mask (B, S) bool.
            spatial_shapes: (L, 2) long or L (H, W) pairs; valid_ratios: (B, L, 2).
            query_pos: (B, Q, D); required unless ``ref_point_head`` exists.
            self_attn_mask: optional (Q, Q) bool, True = may NOT attend.
            bbox_embed: one box MLP per layer for iterative refinement, or None (references
                stay fixed).
            look_forward_twice: the box of layer l is predicted relative to the un-detached
                reference that layer l-1 refined (DINO); otherwise relative to the detached one.

        Returns:
            hidden: L tensors (B, Q, D), normed when ``norm`` exists.
            box_references: L tensors (B, Q, 2 or 4) in sigmoid space, the reference each layer's
            box delta is added to (in inverse-sigmoid space).
        """
        if (query_pos is None) == (self.ref_point_head is None):
            raise ValueError('DeformableDecoder: pass query_pos exactly when there is no '
                             'ref_point_head (query_pos_from_reference=False)')
        if bbox_embed is not None and len(bbox_embed) < self.num_layers:
            raise ValueError(f'bbox_embed has {len(bbox_embed)} entries for '
                             f'{self.num_layers} decoder layers')
        output = tgt
        hidden, box_references = [], []
        box_reference = reference_points
        for lid, layer in enumerate(self.layers):
            box_references.append(box_reference)
            if reference_points.shape[-1] == 4:
                # (B, Q, 1, 4) * (B, 1, L, 4) -> (B, Q, L, 4)
                reference_input = (reference_points[:, :, None]
                                   * torch.cat([valid_ratios, valid_ratios], -1)[:, None])
            elif reference_points.shape[-1] == 2:
                reference_input = reference_points[:, :, None] * valid_ratios[:, None]
            else:
                raise ValueError(f'reference_points must end in 2 or 4 coordinates, got '
                                 f'{tuple(reference_points.shape)}')
            if self.ref_point_head is not None:
                sine = coordinate_sine_embedding(reference_input[:, :, 0, :],
                                                 num_pos_feats=self.embed_dim // 2)
                query_pos = self.ref_point_head(sine.to(output.dtype))
            output = layer(output, query_pos, reference_input, memory, spatial_shapes,
                           memory_padding_mask, self_attn_mask)
            if bbox_embed is not None:
                delta = bbox_embed[lid](output)
                unsigmoid = inverse_sigmoid(reference_points, self.inverse_sigmoid_eps)
                if reference_points.shape[-1] == 4:
                    new_reference = (delta + unsigmoid).sigmoid()
                else:  # a 2-d point becomes a box: the delta's centre moves the point
                    new_reference = torch.cat([delta[..., :2] + unsigmoid, delta[..., 2:]],
                                              -1).sigmoid()
                reference_points = new_reference.detach()
                box_reference = new_reference if look_forward_twice else reference_points
            hidden.append(self.norm(output) if self.norm is not None else output)
        return hidden, box_references


def reset_transformer_parameters(module: nn.Module) -> None:
    """The official transformers' ``_reset_parameters``: Xavier-uniform on every parameter with
    more than one dimension, except those of the deformable attentions, which keep their own
    initialisation (the official code re-runs it after the Xavier pass)."""
    kept = {id(p) for m in module.modules() if isinstance(m, MultiScaleDeformableAttention)
            for p in m.parameters()}
    for param in module.parameters():
        if param.dim() > 1 and id(param) not in kept:
            nn.init.xavier_uniform_(param)
