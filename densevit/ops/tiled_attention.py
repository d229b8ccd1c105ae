"""SDPA over tile buffers whose key rows are overlapping windows (the kernels of ``na2d``).

A key / value *buffer* is ``(N, rows, hb, E)``: per batch-head-tile ``N``, ``rows`` rows of ``hb``
halo columns. A ``RowWindowPart`` reads it as ``count`` overlapping windows of ``size`` rows, a
strided view with no copy, each attended by its own ``length`` query slots. What torch lacks and
is written here: backward passes for those overlapping views (its generic ``as_strided`` /
``unfold`` backward is slow for them), and a CPU path that keeps the window-expanded key gradients
in cache-sized chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RowWindowPart:
    """One SDPA call: ``count`` row windows of the key buffer per ``N`` entry.

    Window ``t`` holds buffer rows ``start + t*step ... start + t*step + size - 1`` and is attended
    by the ``length`` query slots ``offset + t*slot_step ... + length - 1`` of the same entry.
    """

    offset: int
    count: int
    length: int
    slot_step: int
    start: int
    step: int
    size: int


def row_windows(buf: torch.Tensor, part: RowWindowPart) -> torch.Tensor:
    """Overlapping row windows of a ``(N, rows, hb, E)`` buffer as one strided view, no copy."""
    n, _, hb, e = buf.shape
    s = buf.stride()
    # (N, rows, hb, E) -> (N, count, size*hb, E), windows overlap in memory
    return buf.as_strided((n, part.count, part.size * hb, e),
                          (s[0], part.step * s[1], s[2], s[3]),
                          buf.storage_offset() + part.start * s[1])


def add_row_windows_(grad_buf: torch.Tensor, grad: torch.Tensor, part: RowWindowPart) -> None:
    """Backward of ``row_windows``: sum each window's gradient back into its buffer rows."""
    n, rows, hb, e = grad_buf.shape
    step, count, size = part.step, part.count, part.size
    blocked = step > 0 and size % step == 0 and rows % step == 0 and part.start % step == 0
    if step == 0:
        grad = grad.reshape(n, count, size, hb, e)  # (N, count, size*hb, E) -> (..., size, hb, E)
        grad_buf[:, part.start:part.start + size] += grad.sum(1)
    elif count <= (size // step if blocked else size):  # few windows (the borders): one add each
        grad = grad.reshape(n, count, size, hb, e)  # (N, count, size*hb, E) -> (..., size, hb, E)
        for t in range(count):
            first = part.start + t * step
            grad_buf[:, first:first + size] += grad[:, t]
    elif blocked:
        # window row r = m*step + u of window t is buffer row (t + m)*step + u: size/step adds
        # (N, rows, hb, E) -> (N, rows/step, step, hb, E)
        blocks = grad_buf.view(n, rows // step, step, hb, e)
        grad = grad.reshape(n, count, size // step, step, hb, e)
        first = part.start // step
        for m in range(size // step):
            blocks[:, first + m:first + m + count] += grad[:, :, m]
    else:
        grad = grad.reshape(n, count, size, hb, e)  # (N, count, size*hb, E) -> (..., size, hb, E)
        for r in range(size):
            first = part.start + r
            grad_buf[:, first:first + step * (count - 1) + 1:step] += grad[:, :, r]


class RowWindows(torch.autograd.Function):
    """``row_windows`` with a cheap backward; torch's generic ``as_strided`` / ``unfold``
    backward is slow for this overlap pattern."""

    @staticmethod
    def forward(ctx, buf: torch.Tensor, part: RowWindowPart):
        ctx.shape, ctx.part = buf.shape, part
        return row_windows(buf, part)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_buf = grad.new_zeros(ctx.shape)
        add_row_windows_(grad_buf, grad, ctx.part)
        return grad_buf, None


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_CPU_BACKWARD = getattr(torch.ops.aten,
                              "_scaled_dot_product_flash_attention_for_cpu_backward", None)
# Chunks of the fused backward: about this many bytes of window-expanded key gradient each (in
# cache, and reusable heap rather than fresh mmapped pages that fault per 4 KiB), but at most
# _MAX_CHUNKS of them (every op in the loop is a thread fork / join).
_CHUNK_BYTES = 4 << 20
_MAX_CHUNKS = 8


class FusedTileAttention(torch.autograd.Function):
    """All parts through torch's CPU flash-attention kernels; the backward in chunks of ``N``.

    Same math as calling ``F.scaled_dot_product_attention`` per part, but the backward never
    materialises the window-expanded key / value gradients of the whole map: each chunk's
    gradients are summed into the buffers while still in cache. torch lacks a public API that
    returns the logsumexp needed for that, hence the aten ops.
    """

    @staticmethod
    def forward(ctx, q, k_buf, v_buf, parts, masks):
        outs, lses = [], []
        for part, mask in zip(parts, masks):
            o, lse = _FLASH_CPU(part_slots(q, part), row_windows(k_buf, part),
                                row_windows(v_buf, part), attn_mask=mask)
            outs.append(o)
            lses.append(lse)
        ctx.save_for_backward(q, k_buf, v_buf, *outs, *lses)
        ctx.parts, ctx.masks = parts, masks
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grad_outs):
        q, k_buf, v_buf, *saved = ctx.saved_tensors
        n_parts = len(ctx.parts)
        outs, lses = saved[:n_parts], saved[n_parts:]
        n, _, dim = q.shape
        per_entry = max(p.count * p.size for p in ctx.parts) * k_buf.shape[2] * dim
        chunk = max(1, _CHUNK_BYTES // (per_entry * q.element_size()), -(-n // _MAX_CHUNKS))
        grad_outs = [g if g.stride(-1) == 1 else g.contiguous() for g in grad_outs]
        grad_q = torch.zeros_like(q)  # slots no part reads get no gradient
        grad_k = torch.zeros_like(k_buf)
        grad_v = torch.zeros_like(v_buf)
        for c0 in range(0, n, chunk):
            c = slice(c0, min(n, c0 + chunk))
            for part, mask, out, lse, grad in zip(ctx.parts, ctx.masks, outs, lses, grad_outs):
                dq, dk, dv = _FLASH_CPU_BACKWARD(
                    grad[c], part_slots(q[c], part), row_windows(k_buf[c], part),
                    row_windows(v_buf[c], part), out[c], lse[c], 0.0, False, attn_mask=mask[c])
                part_slots(grad_q[c], part).add_(dq)  # parts may share slots
                add_row_windows_(grad_k[c], dk, part)
                add_row_windows_(grad_v[c], dv, part)
        return grad_q, grad_k, grad_v, None, None


def part_slots(q: torch.Tensor, part: RowWindowPart) -> torch.Tensor:
    """The query slots of ``part``: (N, slots, E) -> (N, count, length, E), a strided view."""
    n, _, dim = q.shape
    s = q.stride()
    return q.as_strided((n, part.count, part.length, dim),
                        (s[0], part.slot_step * s[1], s[1], s[2]),
                        q.storage_offset() + part.offset * s[1])


class TileColumns(torch.autograd.Function):
    """Copy a map into column tiles: ``(..., L, C, E) -> (..., count, rows, width, E)``.

    Tile ``j`` holds map columns ``first + j*step ... + width - 1`` (tiles overlap when
    ``width > step``) of map rows ``0 .. L-1``; positions outside the map, and rows ``L ..
    rows-1``, are zeros. One pass over the map, no padded intermediate; torch's ``unfold``
    backward is slow for overlapping tiles, the backward here is ``ceil(width / step)`` adds.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, first: int, step: int, count: int, width: int, rows: int):
        *lead, length, cols, e = x.shape
        ctx.geometry = (x.shape, first, step, count, width)
        out = x.new_zeros(*lead, count, rows, width, e)
        lo, hi = _inner_tiles(first, step, count, width, cols)
        if hi > lo:
            # (..., L, C, E) -> (..., L, tiles, E, width) -> (..., tiles, L, width, E)
            inner = x[..., first + lo * step:, :].unfold(-2, width, step)[..., :hi - lo, :, :]
            out[..., lo:hi, :length, :, :] = inner.movedim(-3, -4).transpose(-1, -2)
        for j in (*range(lo), *range(hi, count)):
            start = first + j * step
            c0, c1 = max(0, start), min(cols, start + width)
            if c1 > c0:
                out[..., j, :length, c0 - start:c1 - start, :] = x[..., c0:c1, :]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, first, step, count, width = ctx.geometry
        *lead, length, cols, e = shape
        grad_x = grad.new_zeros(*lead, length, cols + 2 * width + step, e)  # slack for views
        lo, hi = _inner_tiles(first, step, count, width, cols)
        if hi > lo:
            for m in range(math.ceil(width / step)):
                w = min(width, (m + 1) * step) - m * step
                base = first + (lo + m) * step
                # tile column m*step + c of tile j is map column first + (j + m)*step + c
                target = grad_x[..., base:base + (hi - lo) * step, :].unflatten(-2, (hi - lo, step))
                src = grad[..., lo:hi, :length, m * step:m * step + w, :]  # (..., t, L, w, E)
                target[..., :w, :] += src.transpose(-3, -4)  # -> (..., L, t, w, E)
        for j in (*range(lo), *range(hi, count)):
            start = first + j * step
            c0, c1 = max(0, start), min(cols, start + width)
            if c1 > c0:
                grad_x[..., c0:c1, :] += grad[..., j, :length, c0 - start:c1 - start, :]
        return grad_x[..., :cols, :], None, None, None, None, None


def _inner_tiles(first: int, step: int, count: int, width: int, cols: int) -> tuple[int, int]:
    """Tiles ``lo .. hi-1`` lie fully inside ``[0, cols)``."""
    lo = min(count, max(0, -(-(-first) // step)))  # first + lo*step >= 0
    hi = max(lo, min(count, (cols - width - first) // step + 1))  # first + j*step + width <= cols
    return lo, hi


def attend_parts(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                 parts: tuple[RowWindowPart, ...],
                 masks: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Attention of every part's query slots to its key windows.

    Args:
        q: (N, slots, E) query slots; each part reads ``count`` runs of ``length`` of them.
        k_buf: (N, rows, hb, E) key buffer.
        v_buf: (N, rows, hb, E) value buffer.
        parts: how each part reads the buffers.
        masks: per part an additive mask (N, 1 or count, length, size * hb).

    Returns:
        per part (N, count, length, E): softmax(q k^T / sqrt(E) + mask) v.
    """
    if (q.device.type == "cpu" and _FLASH_CPU_BACKWARD is not None
            and not any(m.requires_grad for m in masks)):
        return FusedTileAttention.apply(q, k_buf, v_buf, parts, masks)
    return tuple(F.scaled_dot_product_attention(part_slots(q, part), RowWindows.apply(k_buf, part),
                                                RowWindows.apply(v_buf, part), attn_mask=mask)
                 for part, mask in zip(parts, masks))
