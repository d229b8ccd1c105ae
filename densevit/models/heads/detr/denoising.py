"""DINO's contrastive denoising (Zhang et al., 2022; DN-DETR's query denoising extended with
negatives), split into three pieces: a query-noising function, a pure attention-mask builder and
the index pairs the criterion supervises the denoising queries with.

Layout of the Ndn = num_groups * group_size denoising queries of every image (M = the most
targets any image of the batch has, group_size = 2M):

    group 0: [positives t_0 .. t_{M-1} | negatives t_0 .. t_{M-1}]  group 1: [...]  ...

Query g * 2M + t is a positive copy of target t, g * 2M + M + t a negative one. Images with fewer
than M targets leave the remaining slots as padding (zero label embedding, zero box logit), as
DINO does; the criterion treats padding and negatives as no-object. The decoder input is the
denoising queries first, then the matching queries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torchvision.ops import box_convert

__all__ = ['DenoisingMeta', 'denoising_attention_mask', 'denoising_match_indices',
           'make_denoising_queries']

# DINO's inverse_sigmoid clamps at 1e-3 for the noised boxes (torch.logit does the same clamp)
_LOGIT_EPS = 1e-3


@dataclass(frozen=True)
class DenoisingMeta:
    """Sizes of the denoising part of a batch (what DINO keeps in its ``dn_meta`` dict).

    Args:
        num_groups: denoising groups.
        group_size: queries per group, 2 * the most targets of any image (positives, then
            negatives).
        num_dn_queries: num_groups * group_size, the denoising queries before the matching ones.
    """

    num_groups: int
    group_size: int
    num_dn_queries: int

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.group_size < 2 or self.group_size % 2:
            raise ValueError(f'need num_groups >= 1 and an even group_size >= 2 (got '
                             f'num_groups={self.num_groups}, group_size={self.group_size})')
        if self.num_dn_queries != self.num_groups * self.group_size:
            raise ValueError(f'num_dn_queries={self.num_dn_queries} != num_groups * group_size '
                             f'= {self.num_groups * self.group_size}')

    @property
    def max_targets(self) -> int:
        """Positive (and negative) slots per group: the most targets of any image."""
        return self.group_size // 2


def make_denoising_queries(targets: Sequence[Mapping[str, torch.Tensor]], *,
                           label_embedding: nn.Embedding, num_classes: int, num_dn: int = 100,
                           label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0
                           ) -> tuple[torch.Tensor, torch.Tensor, DenoisingMeta] | None:
    """Noised copies of the targets as decoder queries (DINO's ``prepare_for_cdn``, training only).

    Every group holds a positive and a negative copy of each target. Labels of both are replaced
    by a random class with probability ``label_noise_ratio / 2``. Box corners move by a random
    sign times ``box_noise_scale * (w/2, h/2)`` times a factor drawn from [0, 1) for positives
    (they stay near their target and learn to reconstruct it) and from [1, 2) for negatives (they
    lie farther out and learn to predict no-object); then corners are clamped to [0, 1].

    Args:
        targets: per image labels (N_i,) and boxes (N_i, 4) cxcywh normalised.
        label_embedding: embeds the (noised) labels; needs at least ``num_classes`` rows.
        num_classes: labels are drawn from [0, num_classes) when flipped.
        num_dn: denoising queries aimed at per image; groups = max(num_dn // max_i N_i, 1).
            (DINO's own code doubles this and takes the quotient only when the doubled number is
            >= 100; for its default 100 that is the same rule.)
        label_noise_ratio: twice the probability of flipping a label; 0 disables it.
        box_noise_scale: box noise relative to the box size; 0 disables it.

    Returns:
        (label_queries (B, Ndn, D), box_queries (B, Ndn, 4) in inverse-sigmoid space, meta), on
        the embedding's device; None when no image has a target.
    """
    if num_classes > label_embedding.num_embeddings:
        raise ValueError(f'label_embedding has {label_embedding.num_embeddings} rows, fewer than '
                         f'num_classes={num_classes}')
    if num_dn < 1:
        raise ValueError(f'num_dn must be >= 1 (got {num_dn})')
    if not 0 <= label_noise_ratio <= 1 or box_noise_scale < 0:
        raise ValueError(f'need 0 <= label_noise_ratio <= 1 and box_noise_scale >= 0 (got '
                         f'{label_noise_ratio}, {box_noise_scale})')
    counts = [len(t['labels']) for t in targets]
    max_targets = max(counts, default=0)
    if max_targets == 0:
        return None
    num_groups = max(num_dn // max_targets, 1)
    meta = DenoisingMeta(num_groups=num_groups, group_size=2 * max_targets,
                         num_dn_queries=num_groups * 2 * max_targets)
    device = label_embedding.weight.device
    num_copies = 2 * num_groups  # copy 2g: positives of group g, copy 2g + 1: its negatives

    labels = torch.cat([t['labels'] for t in targets]).to(device)  # (T,)
    boxes = torch.cat([t['boxes'] for t in targets]).to(device, torch.float)  # (T, 4)
    num_total = len(labels)
    image_idx = torch.cat([torch.full((n,), i, dtype=torch.long, device=device)
                           for i, n in enumerate(counts)])  # (T,)
    slot = torch.cat([torch.arange(n, device=device) for n in counts])  # (T,) index in its image
    copy = torch.arange(num_copies, device=device).repeat_interleave(num_total)  # (C*T,)
    negative = (copy % 2).bool()  # (C*T,)
    # (T,) -> (C*T,): copy k of target t of image i goes to query k*M + t of image i
    image_idx = image_idx.repeat(num_copies)
    query_idx = copy * max_targets + slot.repeat(num_copies)
    labels = labels.repeat(num_copies)
    boxes = boxes.repeat(num_copies, 1)  # (T, 4) -> (C*T, 4)

    if label_noise_ratio > 0:
        flip = torch.rand(labels.shape, device=device) < label_noise_ratio * 0.5
        labels = torch.where(flip, torch.randint_like(labels, 0, num_classes), labels)
    if box_noise_scale > 0:
        corners = box_convert(boxes, 'cxcywh', 'xyxy')
        half_size = boxes[:, 2:].repeat(1, 2) / 2  # (w/2, h/2, w/2, h/2)
        sign = torch.randint(0, 2, boxes.shape, device=device).float() * 2 - 1
        factor = torch.rand(boxes.shape, device=device) + negative[:, None].float()
        corners = (corners + sign * factor * half_size * box_noise_scale).clamp(0.0, 1.0)
        boxes = box_convert(corners, 'xyxy', 'cxcywh')  # crossed corners give w or h <= 0

    batch_size = len(targets)
    label_queries = label_embedding.weight.new_zeros(
        batch_size, meta.num_dn_queries, label_embedding.embedding_dim)
    label_queries = label_queries.index_put((image_idx, query_idx), label_embedding(labels))
    box_queries = boxes.new_zeros(batch_size, meta.num_dn_queries, 4)
    box_queries = box_queries.index_put((image_idx, query_idx), torch.logit(boxes, _LOGIT_EPS))
    return label_queries, box_queries, meta


def denoising_attention_mask(meta: DenoisingMeta, num_queries: int,
                             device: torch.device | str | None = None) -> torch.Tensor:
    """Self-attention mask of the decoder over [denoising queries, matching queries].

    A denoising group sees itself and the matching queries, never another group (each group
    holds the answers); matching queries see no denoising query (they do not exist at inference).

    Args:
        meta: from ``make_denoising_queries``.
        num_queries: matching queries Q.
        device: of the mask.

    Returns:
        (Ndn + Q, Ndn + Q) bool, True where row may NOT attend to column (``nn.MultiheadAttention``
        convention; ``scaled_dot_product_attention`` wants the negation).
    """
    num_dn = meta.num_dn_queries
    mask = torch.zeros(num_dn + num_queries, num_dn + num_queries, dtype=torch.bool,
                       device=device)
    mask[num_dn:, :num_dn] = True
    group = torch.arange(num_dn, device=device) // meta.group_size  # (Ndn,)
    mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
    return mask


def denoising_match_indices(meta: DenoisingMeta, targets: Sequence[Mapping[str, torch.Tensor]]
                            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The positive denoising query of every target in every group, in the matcher's format.

    Args:
        meta: from ``make_denoising_queries`` for these targets.
        targets: per image labels (N_i,).

    Returns:
        Per image (query_idx, target_idx), int64 of length num_groups * N_i, on the labels'
        device; negatives and padding are left unmatched (no-object).
    """
    indices = []
    for i, t in enumerate(targets):
        num = len(t['labels'])
        if num > meta.max_targets:
            raise ValueError(f'image {i} has {num} targets but the denoising queries were made '
                             f'for at most {meta.max_targets}')
        device = t['labels'].device
        target_idx = torch.arange(num, device=device)
        group_start = torch.arange(meta.num_groups, device=device) * meta.group_size  # (G,)
        # (G, 1) + (1, N_i) -> (G*N_i,)
        query_idx = (group_start[:, None] + target_idx[None, :]).flatten()
        indices.append((query_idx, target_idx.repeat(meta.num_groups)))
    return indices
