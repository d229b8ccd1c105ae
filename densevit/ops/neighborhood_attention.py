"""2-D neighborhood attention (NAT / DiNAT) with natten's semantics, in pure PyTorch.

``na2d(query, key, value, kernel_size, dilation=1, rpb=None)`` takes natten's heads-last layout
``(B, H, W, heads, head_dim)`` and returns the same shape. Each query attends to the
``kernel x kernel`` window of its dilation group, shifted (not clipped) at the borders, with scale
``head_dim ** -0.5``; ``rpb`` is the relative position bias of the original NAT / DiNAT
``(heads, 2k-1, 2k-1)`` added to the logits, indexed by the query -> key offset.

On CUDA with NATTEN installed and no ``rpb`` the call goes to natten's fused kernels. Everywhere
else it runs the tiled path below, which natten lacks on CPU (its CPU path is FlexAttention
without compilation: slow, N^2 memory, forward only).

Tiled path (geometry in ``neighborhood_plan``, kernels in ``tiled_attention``): each dilation
group pair of the map is a sub-grid holding a plain dilation-1 problem; its queries are cut into
``a x b`` tiles; keys / values are copied once into column halos whose row windows are
overlapping strided views, so every tile attends to its ``(a + 2p) x (b + 2p)`` halo through one
batched SDPA call per part (interior rows, border rows) with a small additive mask that hides
keys outside each query's window (and carries ``rpb``). Memory grows with N * k^2, never N^2.

Under ``torch.compile`` the tiled path is the opaque operator ``densevit::na2d_tiled`` (see
``_na2d_op``), so a NAT / DiNAT block compiles without graph breaks.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .neighborhood_plan import SubgridPlan, plan_subgrids
from .tiled_attention import RowWindowPart, TileColumns, attend_parts

IntPair = Union[int, Sequence[int]]

# Query tile (rows a, cols b; b is raised to the kernel if smaller). Every query computes logits
# against (a + 2p) * (b + 2p) keys, and the key gradients are (a + 2p)(b + 2p) / (a b) times the
# key size: (2, 8) balanced the two best in CPU measurements against (1..4, 7..32) for k = 7.
_TILE = (2, 8)


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"na2d: {name} must be an int or a pair of ints (h, w), got {value!r}")
    return pair  # type: ignore[return-value]


@lru_cache(maxsize=64)
def _additive(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attended, -inf elsewhere (cached per plan and dtype)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(
        ~valid, float("-inf"))


def _na2d_tiled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kernel: tuple[int, int], dilation: tuple[int, int], rpb: Optional[torch.Tensor],
                tile: tuple[int, int] = _TILE) -> torch.Tensor:
    """The pure-PyTorch path of ``na2d`` (validated arguments, pairs for kernel / dilation)."""
    bsz, height, width, heads, dim = query.shape
    (dh, dw), (kh, kw) = dilation, kernel
    plans = plan_subgrids(height, width, kernel, dilation, tile, query.device)
    rows_max, cols_max = plans[0][0].rows.length, plans[0][0].cols.length

    def grid(x: torch.Tensor) -> torch.Tensor:
        if (rows_max * dh, cols_max * dw) != (height, width):
            x = F.pad(x, (0, 0, 0, 0, 0, cols_max * dw - width, 0, rows_max * dh - height))
        # (B, H, W, heads, E) -> (B, Lr, dh, Lc, dw, heads, E), a view
        return x.unflatten(1, (rows_max, dh)).unflatten(3, (cols_max, dw))

    q_grid, k_grid, v_grid = grid(query), grid(key), grid(value)
    blocks = []
    for row_plans in plans:
        row_blocks = []
        for plan in row_plans:
            block = _attend_subgrids(plan, q_grid, k_grid, v_grid, rpb, kh, kw)
            if block.shape[1] < rows_max or block.shape[3] < cols_max:
                # (B, Lr, Gr, Lc, Gc, heads, E): pad shorter dilation groups to the longest
                block = F.pad(block, (0, 0, 0, 0, 0, 0, 0, cols_max - block.shape[3],
                                      0, 0, 0, rows_max - block.shape[1]))
            row_blocks.append(block)
        blocks.append(torch.cat(row_blocks, dim=4) if len(row_blocks) > 1 else row_blocks[0])
    out = torch.cat(blocks, dim=2) if len(blocks) > 1 else blocks[0]
    # (B, Lr, dh, Lc, dw, heads, E) -> (B, H, W, heads, E)
    out = out.reshape(bsz, rows_max * dh, cols_max * dw, heads, dim)
    return out[:, :height, :width].contiguous()  # contiguous like natten's output


def _attend_subgrids(plan: SubgridPlan, q_grid: torch.Tensor, k_grid: torch.Tensor,
                     v_grid: torch.Tensor, rpb: Optional[torch.Tensor], kh: int,
                     kw: int) -> torch.Tensor:
    """Attention over the sub-grids of one shape (``*_grid``: (B, Lr, dh, Lc, dw, heads, E)
    views of the map); returns (B, Lr, Gr, Lc, Gc, heads, E)."""
    bsz, _, _, _, _, heads, dim = q_grid.shape
    (g0, g1, lr), (c0, c1, lc) = plan.rows_run, plan.cols_run
    rows, cols = plan.rows, plan.cols
    p, a, s = kh // 2, rows.tile, rows.count
    b, hb, n_t, delta = cols.tile, cols.halo, cols.count, cols.delta
    groups = (g1 - g0) * (c1 - c0)
    n0 = bsz * heads * groups
    n = n0 * n_t
    interior = lr - 2 * p

    def sub(x: torch.Tensor) -> torch.Tensor:
        # (B, Lr, dh, Lc, dw, heads, E) -> (B, heads, Gr, Gc, Lr, Lc, E), a view
        return x[:, :lr, g0:g1, :lc, c0:c1].permute(0, 5, 2, 4, 1, 3, 6)

    # queries: whole column tiles of b (zero outside the map), rows padded to whole row tiles;
    # (B, heads, Gr, Gc, Lr, Lc, E) -> (B, heads, Gr, Gc, nT, rows, b, E) -> (N, rows*b, E)
    q_rows = max(lr, p + s * a)
    q = TileColumns.apply(sub(q_grid), -delta, b, n_t, b, q_rows).view(n, q_rows * b, dim)
    # keys / values: halos of hb columns around each tile, rows padded for the last row tile;
    # (B, heads, Gr, Gc, Lr, Lc, E) -> (B, heads, Gr, Gc, nT, rows, hb, E) -> (N, rows, hb, E)
    first = -delta - kw // 2
    k_buf, v_buf = (TileColumns.apply(sub(x), first, b, n_t, hb, rows.buffer_rows).view(
        n, rows.buffer_rows, hb, dim) for x in (k_grid, v_grid))

    def mask(valid: torch.Tensor, bias_index: torch.Tensor) -> torch.Tensor:
        # -> (N, 1 or windows, L, keys), broadcast over the window dim where possible
        add = _additive(valid, q.dtype)  # (nT, L, keys)
        if rpb is None:
            return add.expand(n0, *add.shape).reshape(n, 1, *add.shape[1:])
        bias = rpb.reshape(heads, -1)[:, bias_index].to(q.dtype)  # (heads, [2,] nT, L, keys)
        if bias_index.dim() == 4:  # border: (heads, 2, nT, L, keys) -> (heads, nT, 2, L, keys)
            bias = bias.permute(0, 2, 1, 3, 4) + add[None, :, None]
        else:
            bias = (bias + add)[:, :, None]  # (heads, nT, 1, L, keys)
        m = bias[None, :, None].expand(bsz, heads, groups, *bias.shape[1:])
        return m.reshape(n, *bias.shape[2:])  # (B, heads, G, nT, w, L, keys) -> (N, w, L, keys)

    # interior: S windows of a + 2p buffer rows (step a) for query rows p + t*a ...; borders: the
    # top p rows use buffer rows 0..k-1, the bottom p rows Lr-k..Lr-1
    parts = [RowWindowPart(p * b, s, a * b, a * b, 0, a, a + 2 * p)]
    masks = [mask(plan.valid_main, plan.bias_main)]
    if p > 0:
        parts.append(RowWindowPart(0, 2, p * b, (lr - p) * b, 0, rows.border_step, kh))
        masks.append(mask(plan.valid_border, plan.bias_border))
    outs = attend_parts(q, k_buf, v_buf, tuple(parts), tuple(masks))

    # back to rows [top p | interior | bottom p] and columns (nT*b, cropped)
    main = outs[0].reshape(bsz, heads, g1 - g0, c1 - c0, n_t, s * a, b, dim)
    pieces = [main[:, :, :, :, :, :interior]]
    if p > 0:
        border = outs[1].reshape(bsz, heads, g1 - g0, c1 - c0, n_t, 2, p, b, dim)
        pieces = [border[:, :, :, :, :, 0], pieces[0], border[:, :, :, :, :, 1]]
    # each (B, heads, Gr, Gc, nT, rows, b, E) -> (B, rows, Gr, nT, b, Gc, heads, E)
    out = torch.cat([x.permute(0, 5, 2, 4, 6, 3, 1, 7) for x in pieces], dim=1)
    # (B, Lr, Gr, nT, b, Gc, heads, E) -> (B, Lr, Gr, nT*b, Gc, heads, E) -> crop to Lc columns
    return out.flatten(3, 4)[:, :, :, delta:delta + lc]


def _use_natten(query: torch.Tensor, rpb: Optional[torch.Tensor]) -> bool:
    if not query.is_cuda or rpb is not None:
        return False
    try:
        from natten.backends import get_compatible_backends
    except ImportError:
        return False
    fused = {"blackwell-fna", "hopper-fna", "cutlass-fna"}
    return bool(fused & set(get_compatible_backends(query, query, query, torch_compile=False)))


def _check(query, key, value, kernel, dilation, rpb) -> None:
    if query.dim() != 5:
        raise ValueError(f"na2d: query must be (B, H, W, heads, head_dim), got shape "
                         f"{tuple(query.shape)}")
    for name, t in (("key", key), ("value", value)):
        if t.shape != query.shape:
            raise ValueError(f"na2d: {name} shape {tuple(t.shape)} must equal query shape "
                             f"{tuple(query.shape)}")
        if t.dtype != query.dtype or t.device != query.device:
            raise ValueError(f"na2d: {name} is {t.dtype} on {t.device}, query is {query.dtype} "
                             f"on {query.device}; they must match")
    _, height, width, heads, _ = query.shape
    for axis, size, k, d in (("height", height, kernel[0], dilation[0]),
                             ("width", width, kernel[1], dilation[1])):
        if k < 1 or k % 2 == 0:
            raise ValueError(f"na2d: kernel_size must be odd and >= 1, got {k} along {axis}")
        if d < 1:
            raise ValueError(f"na2d: dilation must be >= 1, got {d} along {axis}")
        if k * d > size:
            raise ValueError(f"na2d: kernel_size * dilation = {k} * {d} = {k * d} exceeds the map "
                             f"{axis} {size}; use a map of at least {k * d} or a smaller kernel")
    if rpb is not None:
        want = (heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1)
        if tuple(rpb.shape) != want:
            raise ValueError(f"na2d: rpb must have shape (heads, 2*kh-1, 2*kw-1) = {want}, got "
                             f"{tuple(rpb.shape)}")


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntPair,
         dilation: IntPair = 1, rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """2-D neighborhood attention, same semantics as ``natten.na2d`` (plus NAT's ``rpb``).

    Args:
        query: (B, H, W, heads, head_dim).
        key: same shape as ``query``.
        value: same shape as ``query``.
        kernel_size: odd window size, int or (kh, kw).
        dilation: int or (dh, dw); ``kernel_size * dilation`` must not exceed the map side.
        rpb: optional relative position bias (heads, 2*kh-1, 2*kw-1) added to the logits.

    Returns:
        (B, H, W, heads, head_dim), softmax(q k^T * head_dim**-0.5 [+ rpb]) v over each
        query's neighborhood.
    """
    kernel = _pair(kernel_size, "kernel_size")
    dil = _pair(dilation, "dilation")
    _check(query, key, value, kernel, dil, rpb)
    if _use_natten(query, rpb):
        import natten

        return natten.na2d(query, key, value, kernel, dilation=dil)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # one op in the graph
        return _na2d_op(query, key, value, list(kernel), list(dil), rpb)
    return _na2d_tiled(query, key, value, kernel, dil, rpb)


# Under torch.compile the tiled path is one opaque operator: dynamo cannot trace its strided
# views (``storage_offset``) and cached plans without breaking the graph dozens of times per
# block, and inductor has nothing to fuse in it anyway. Eager calls keep the plain autograd of the
# tiled path; the compiled backward recomputes the forward inside ``_na2d_backward_op`` (one more
# na2d forward per training step, the price of an opaque forward).
@torch.library.custom_op("densevit::na2d_tiled", mutates_args=())
def _na2d_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: list[int],
             dilation: list[int], rpb: Optional[torch.Tensor]) -> torch.Tensor:
    return _na2d_tiled(query, key, value, tuple(kernel), tuple(dilation), rpb)


@_na2d_op.register_fake
def _(query, key, value, kernel, dilation, rpb):
    return torch.empty_like(query, memory_format=torch.contiguous_format)


def _autograd_dispatch():
    """Autograd dispatch back on inside a custom op's kernel, which runs with it excluded (as
    torch's own ``invoke_leaf_function`` does; autocast stays excluded, as in the forward)."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.AutogradOther, torch._C.DispatchKey.AutogradCPU,
                torch._C.DispatchKey.AutogradCUDA, torch._C.DispatchKey.AutogradNestedTensor):
        exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("densevit::na2d_tiled_backward", mutates_args=())
def _na2d_backward_op(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, kernel: list[int], dilation: list[int],
                      rpb: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of query, key, value (and rpb when given) of ``_na2d_op`` at ``grad``, each
    contiguous."""
    inputs = [t.detach().requires_grad_(True) for t in (query, key, value)]
    if rpb is not None:
        inputs.append(rpb.detach().requires_grad_(True))
    with _autograd_dispatch(), torch.enable_grad():
        out = _na2d_tiled(*inputs[:3], tuple(kernel), tuple(dilation),
                          inputs[3] if rpb is not None else None)
        return [g.contiguous() for g in torch.autograd.grad(out, inputs, grad)]


@_na2d_backward_op.register_fake
def _(grad, query, key, value, kernel, dilation, rpb):
    tensors = (query, key, value) if rpb is None else (query, key, value, rpb)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]


def _na2d_op_setup(ctx, inputs, output) -> None:
    query, key, value, kernel, dilation, rpb = inputs
    ctx.kernel, ctx.dilation, ctx.has_rpb = kernel, dilation, rpb is not None
    ctx.save_for_backward(query, key, value, rpb)


def _na2d_op_backward(ctx, grad):
    query, key, value, rpb = ctx.saved_tensors
    grads = _na2d_backward_op(grad, query, key, value, ctx.kernel, ctx.dilation,
                              rpb if ctx.has_rpb else None)
    return grads[0], grads[1], grads[2], None, None, grads[3] if ctx.has_rpb else None


_na2d_op.register_autograd(_na2d_op_backward, setup_context=_na2d_op_setup)
