"""Tiling plan for 2-D neighborhood attention built from SDPA calls.

Geometry only: how queries and keys of one sub-grid are cut into tiles, and which (query, key)
pairs of a tile belong to the neighborhood. No tensor math on q, k, v happens here.

Neighborhood definition (the one natten uses): along one axis of length ``L`` with kernel ``k``
(odd, ``p = k // 2``) and dilation ``d``, position ``i`` belongs to dilation group ``g = i % d``;
the group is a sub-axis of length ``L_g = ceil((L - g) / d)`` where ``i`` sits at ``i' = i // d``.
Its window is the ``k`` consecutive sub-axis positions starting at ``clamp(i' - p, 0, L_g - k)``,
i.e. centred where possible and shifted (not clipped) at the borders. The 2-D neighborhood is the
product of the row and column windows, so each dilation group pair is a plain dilation-1 problem.

How one sub-grid of shape ``(Lr, Lc)`` is tiled:

* Columns: tiles of ``b >= k`` query columns at a uniform step ``b``, starting ``delta`` columns
  left of the map; tile ``j`` reads the ``hb = b + 2p`` key columns ``j*b - delta - p ...``.
  Positions outside the map are zero padding that the mask hides. Uniform tiles make the key
  halos one strided copy; ``delta`` is picked so that the right-border queries (whose windows
  shift left) still find their window inside their tile's halo.
* Rows, interior (``p <= i' < Lr - p``): tiles of ``a`` query rows. Tile ``t`` reads key rows
  ``t*a ... t*a + a + 2p - 1``, so all tiles of a column tile are overlapping windows of one buffer:
  a strided view, no copy.
* Rows, border (``i' < p`` and ``i' >= Lr - p``): the ``p`` top rows all use key rows ``0..k-1``,
  the ``p`` bottom rows ``Lr-k..Lr-1``: two more windows of the same buffer.

The mask of each part depends only on the column tile, so it is ``(column tiles, a*b, keys)``;
``SubgridPlan`` holds those masks (and the rpb indices) for the sub-grids of one shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True, eq=False)
class ColumnTiles:
    """Column tiling of one sub-axis (int64 / bool tensors in sub-axis coordinates)."""

    length: int
    tile: int  # b, query columns per tile
    halo: int  # hb = b + 2p, key columns per tile
    count: int  # nT
    delta: int  # tile j starts at column j*b - delta
    valid: torch.Tensor  # (nT, b, hb) key slot inside the query's window
    offset: torch.Tensor  # (nT, b, hb) key - query + (k - 1): the rpb index, clamped


@dataclass(frozen=True, eq=False)
class RowTiles:
    """Row plan of one sub-axis: ``count`` interior tiles of ``tile`` rows, then the borders."""

    length: int
    tile: int  # a
    count: int  # S
    buffer_rows: int  # S*a + 2p rows of the key buffer (zero padded past the map)
    border_step: int  # buffer rows between the top and bottom border windows (Lr - k)
    valid_main: torch.Tensor  # (a, a + 2p): same for every interior tile
    offset_main: torch.Tensor  # (a, a + 2p) rpb index
    offset_border: torch.Tensor  # (2, p, k) rpb index of the top / bottom border rows


def window_start(pos: torch.Tensor, length: int, kernel: int) -> torch.Tensor:
    """First position of the (shifted, not clipped) window of each position on a sub-axis."""
    return (pos - kernel // 2).clamp(0, length - kernel)


@lru_cache(maxsize=256)
def column_tiles(length: int, kernel: int, tile: int) -> ColumnTiles:
    """Tile a sub-axis of ``length >= kernel`` columns into uniform query tiles with key halos."""
    p = kernel // 2
    b = max(tile, kernel)
    # the tile holding the last column must start at or before length - p - 1, otherwise the
    # left-shifted windows of the right border would leave its halo; b >= k makes this reachable
    delta = next(d for d in range(b - p) if (length - 1 + d) % b >= p)
    count = math.ceil((length + delta) / b)
    hb = b + 2 * p
    query = torch.arange(count)[:, None] * b - delta + torch.arange(b)  # (nT, b)
    key = query[:, :1] - p + torch.arange(hb)  # (nT, hb)
    key_real = (key >= 0) & (key < length)
    ws = window_start(query, length, kernel)[:, :, None]  # (nT, b, 1)
    in_window = (key[:, None, :] >= ws) & (key[:, None, :] < ws + kernel)  # (nT, b, hb)
    query_real = ((query >= 0) & (query < length))[:, :, None]
    # padding queries (outputs dropped) attend to any real key so no softmax row is empty
    valid = torch.where(query_real, in_window, key_real[:, None, :]) & key_real[:, None, :]
    offset = (key[:, None, :] - query[:, :, None] + kernel - 1).clamp(0, 2 * kernel - 2)
    return ColumnTiles(length, b, hb, count, delta, valid, offset)


@lru_cache(maxsize=256)
def row_tiles(length: int, kernel: int, tile: int) -> RowTiles:
    """Split a sub-axis of ``length >= kernel`` rows into interior tiles of ``tile`` rows."""
    p = kernel // 2
    interior = length - 2 * p
    a = max(1, min(tile, interior))
    count = math.ceil(interior / a)
    u = torch.arange(a)[:, None]
    r = torch.arange(a + 2 * p)[None, :]
    valid_main = (r >= u) & (r <= u + 2 * p)  # query row p + t*a + u, key row t*a + r
    offset_main = (r - u + p).clamp(0, 2 * kernel - 2)
    ub = torch.arange(p)[:, None]
    rb = torch.arange(kernel)[None, :]
    top = rb - ub + 2 * p  # query row u, key row r
    bottom = rb - ub + p - 1  # query row Lr - p + u, key row Lr - k + r
    return RowTiles(length, a, count, count * a + 2 * p, length - kernel, valid_main,
                    offset_main, torch.stack([top, bottom]))


def dilation_groups(length: int, dilation: int) -> list[tuple[int, int, int]]:
    """The ``dilation`` interleaved sub-axes of an axis as ``(first, stop, sub_length)`` runs of
    consecutive groups sharing a length (longer groups come first)."""
    runs: list[tuple[int, int, int]] = []
    for g in range(dilation):
        sub = math.ceil((length - g) / dilation)
        if runs and runs[-1][2] == sub:
            runs[-1] = (runs[-1][0], g + 1, sub)
        else:
            runs.append((g, g + 1, sub))
    return runs


@dataclass(frozen=True, eq=False)
class SubgridPlan:
    """Tiling of the sub-grids of one shape: dilation groups ``rows_run`` x ``cols_run``."""

    rows_run: tuple[int, int, int]  # (first group, stop group, sub-grid rows)
    cols_run: tuple[int, int, int]
    rows: RowTiles
    cols: ColumnTiles
    valid_main: torch.Tensor  # (nT, a*b, (a+2p)*hb) bool
    valid_border: torch.Tensor  # (nT, p*b, k*hb) bool
    bias_main: torch.Tensor  # (nT, a*b, (a+2p)*hb) index into rpb[h].flatten()
    bias_border: torch.Tensor  # (2, nT, p*b, k*hb)


@lru_cache(maxsize=64)
def plan_subgrids(height: int, width: int, kernel: tuple[int, int], dilation: tuple[int, int],
                  tile: tuple[int, int],
                  device: torch.device) -> tuple[tuple[SubgridPlan, ...], ...]:
    """Plans of a ``height x width`` map indexed [row run][column run] (one run per distinct
    dilation-group length), masks and rpb indices on ``device``; cached."""
    kh, kw = kernel
    return tuple(
        tuple(_subgrid_plan(rows_run, cols_run, row_tiles(rows_run[2], kh, tile[0]),
                            column_tiles(cols_run[2], kw, tile[1]), kh, kw, device)
              for cols_run in dilation_groups(width, dilation[1]))
        for rows_run in dilation_groups(height, dilation[0]))


def _subgrid_plan(rows_run, cols_run, rows: RowTiles, cols: ColumnTiles, kh: int, kw: int,
                  device: torch.device) -> SubgridPlan:
    p, a, b, hb, n_t = kh // 2, rows.tile, cols.tile, cols.halo, cols.count
    # key slot order in a tile is (buffer row, halo column)
    vm = rows.valid_main[None, :, None, :, None] & cols.valid[:, None, :, None, :]
    valid_main = vm.reshape(n_t, a * b, (a + 2 * p) * hb)  # (nT, a, b, a+2p, hb) -> (nT, ab, keys)
    vb = cols.valid[:, None, :, None, :].expand(n_t, p, b, kh, hb)
    valid_border = vb.reshape(n_t, p * b, kh * hb)  # (nT, p, b, k, hb) -> (nT, pb, keys)
    wc = 2 * kw - 1
    bm = rows.offset_main[None, :, None, :, None] * wc + cols.offset[:, None, :, None, :]
    bias_main = bm.reshape(n_t, a * b, (a + 2 * p) * hb)  # (nT, a, b, a+2p, hb) -> (nT, ab, keys)
    bb = rows.offset_border[:, None, :, None, :, None] * wc + cols.offset[None, :, None, :, None, :]
    bias_border = bb.reshape(2, n_t, p * b, kh * hb)  # (2, nT, p, b, k, hb) -> (2, nT, pb, keys)
    return SubgridPlan(rows_run, cols_run, rows, cols, valid_main.to(device),
                       valid_border.to(device), bias_main.to(device), bias_border.to(device))
