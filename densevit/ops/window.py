"""Window partitioning and decomposed relative position bias for plain-ViT attention (ViTDet / SAM).

Free functions over channels-last maps ``(B, H, W, C)``:

- ``window_partition`` / ``window_unpartition``: split a map into non-overlapping square windows
  (zero-padding the bottom and right edges where the size does not divide) and put them back.
- ``get_rel_pos``: the (q_size, k_size, C) table of relative-position embeddings along one axis,
  resampled linearly when the stored table was sized for another grid.
- ``decomposed_rel_pos_bias``: the additive attention bias ``q . R_h[dh] + q . R_w[dw]`` of
  MViTv2 / ViTDet / SAM as one (B, q_h * q_w, k_h * k_w) tensor, ready to pass as the float
  ``attn_mask`` of ``torch.nn.functional.scaled_dot_product_attention``.
- ``rel_pos_attention``: SDPA with that bias, built and applied a few query rows at a time so a
  global block never holds the whole (heads, N, N) bias (805 MB for SAM ViT-B at 1024).

timm and torchvision have no channels-last window partition with padding that matches these
models, and no decomposed relative-position bias in the form SDPA takes, hence this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ['window_partition', 'window_unpartition', 'get_rel_pos', 'decomposed_rel_pos_bias',
           'rel_pos_attention']


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a channels-last map into square windows, zero-padding bottom and right if needed.

    Args:
        x: (B, H, W, C) map.
        window_size: side of a window.

    Returns:
        windows (B * nW, window_size, window_size, C) and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    # (B, Hp, Wp, C) -> (B, Hp/ws, ws, Wp/ws, ws, C)
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    # (B, nH, ws, nW, ws, C) -> (B*nH*nW, ws, ws, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``window_partition``: reassemble windows and crop the padding.

    Args:
        windows: (B * nW, window_size, window_size, C).
        window_size: side of a window.
        pad_hw: padded size (Hp, Wp) returned by ``window_partition``.
        hw: original size (H, W).

    Returns:
        (B, H, W, C) map.
    """
    hp, wp = pad_hw
    h, w = hw
    n_h, n_w = hp // window_size, wp // window_size
    b = windows.shape[0] // (n_h * n_w)
    # (B*nH*nW, ws, ws, C) -> (B, nH, nW, ws, ws, C)
    x = windows.view(b, n_h, n_w, window_size, window_size, -1)
    # (B, nH, nW, ws, ws, C) -> (B, nH, ws, nW, ws, C) -> (B, Hp, Wp, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, C) table of embeddings for offsets -(S-1)..(S-1); resampled linearly to
            2 * max(q_size, k_size) - 1 rows when L differs.

    Returns:
        (q_size, k_size, C) embeddings; sizes that differ are matched by scaling the coordinates
        of the shorter axis.
    """
    num_offsets = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != num_offsets:
        # (L, C) -> (1, C, L) -> (1, C, num_offsets) -> (num_offsets, C)
        rel_pos = F.interpolate(rel_pos.t()[None], size=num_offsets, mode='linear')[0].t()
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    offsets = (q_coords - k_coords) + (k_size - 1) * k_scale
    return rel_pos[offsets.long()]


def decomposed_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            q_size: tuple[int, int], k_size: tuple[int, int]) -> torch.Tensor:
    """Decomposed relative position bias (MViTv2, used by ViTDet and SAM) as an additive mask.

    ``bias[..., (qh, qw), (kh, kw)] = q[..., (qh, qw), :] . R_h[qh, kh] + q[..., (qh, qw), :] .
    R_w[qw, kw]``, with the query taken before the attention scale.

    Args:
        q: (..., q_h * q_w, C) queries, any leading dims (e.g. (B, heads)).
        rel_pos_h: (Lh, C) table along the height axis.
        rel_pos_w: (Lw, C) table along the width axis.
        q_size: (q_h, q_w) query grid.
        k_size: (k_h, k_w) key grid.

    Returns:
        (..., q_h * q_w, k_h * k_w) bias, in q's dtype.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # (q_h, k_h, C)
    table_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)  # (q_w, k_w, C)
    # (..., q_h * q_w, C) -> (..., q_h, q_w, C)
    r_q = q.unflatten(-2, (q_h, q_w))
    # einsum may return permuted views; contiguous (small) terms make the broadcast sum below
    # come out contiguous, so flattening it is free
    rel_h = torch.einsum('...hwc,hkc->...hwk', r_q, table_h).contiguous()  # (..., q_h, q_w, k_h)
    rel_w = torch.einsum('...hwc,wkc->...hwk', r_q, table_w).contiguous()  # (..., q_h, q_w, k_w)
    # (..., q_h, q_w, k_h, 1) + (..., q_h, q_w, 1, k_w) -> (..., q_h * q_w, k_h * k_w)
    bias = rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)
    return bias.flatten(-4, -3).flatten(-2, -1)


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                      q_size: tuple[int, int], k_size: tuple[int, int],
                      max_bias_elements: int = 1 << 22) -> torch.Tensor:
    """Scaled dot-product attention with the decomposed relative position bias.

    Same result as ``scaled_dot_product_attention(q, k, v, attn_mask=decomposed_rel_pos_bias(
    q, ...))``, but when that bias would exceed ``max_bias_elements`` the queries are processed a
    few grid rows at a time, so only a slice of the bias exists at once (less memory, and no
    page faults on a fresh multi-hundred-MB buffer at every global block).

    Args:
        q: (B, heads, q_h * q_w, C) queries.
        k: (B, heads, k_h * k_w, C) keys.
        v: (B, heads, k_h * k_w, Cv) values.
        rel_pos_h: (Lh, C) table along the height axis.
        rel_pos_w: (Lw, C) table along the width axis.
        q_size: (q_h, q_w) query grid.
        k_size: (k_h, k_w) key grid.
        max_bias_elements: largest bias slice to materialise, in elements.

    Returns:
        (B, heads, q_h * q_w, Cv).
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    bias_per_row = q.shape[0] * q.shape[1] * q_w * k_h * k_w
    if bias_per_row * q_h <= max_bias_elements:
        bias = decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, q_size, k_size)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    table_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # (q_h, k_h, C)
    table_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)  # (q_w, k_w, C)
    # (B, heads, q_h * q_w, C) -> (B, heads, q_h, q_w, C)
    r_q = q.unflatten(-2, (q_h, q_w))
    # (B, heads, q_h, q_w, k_h) and (B, heads, q_h, q_w, k_w), contiguous as above
    rel_h = torch.einsum('...hwc,hkc->...hwk', r_q, table_h).contiguous()
    rel_w = torch.einsum('...hwc,wkc->...hwk', r_q, table_w).contiguous()
    rows = max(1, max_bias_elements // bias_per_row)
    outs = []
    for start in range(0, q_h, rows):
        rows_h = rel_h[:, :, start:start + rows]
        rows_w = rel_w[:, :, start:start + rows]
        # (B, heads, r, q_w, k_h, 1) + (B, heads, r, q_w, 1, k_w) -> (B, heads, r*q_w, k_h*k_w)
        bias = (rows_h.unsqueeze(-1) + rows_w.unsqueeze(-2)).flatten(-4, -3).flatten(-2, -1)
        # (B, heads, r, q_w, C) -> (B, heads, r*q_w, C)
        q_rows = r_q[:, :, start:start + rows].flatten(2, 3)
        outs.append(F.scaled_dot_product_attention(q_rows, k, v, attn_mask=bias))
    return torch.cat(outs, dim=2)
