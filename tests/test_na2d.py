"""densevit.ops.na2d against natten (forward) and an explicit masked full attention (grads, rpb)."""
import math
import warnings

import pytest
import torch

from densevit.ops import na2d
from densevit.ops.neighborhood_plan import column_tiles, row_tiles


def _axis_window(length: int, kernel: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) bool neighborhood along one axis and (L, L) relative offset, from the definition:
    same dilation group, key inside the k-window of the group starting at clamp(i' - k//2, 0,
    L_g - k), where i' is the query's index inside its group of length L_g."""
    inside = torch.zeros(length, length, dtype=torch.bool)
    offset = torch.zeros(length, length, dtype=torch.long)
    for i in range(length):
        group = i % dilation
        group_len = math.ceil((length - group) / dilation)
        start = min(max(i // dilation - kernel // 2, 0), group_len - kernel)
        for j in range(length):
            if j % dilation == group and start <= j // dilation < start + kernel:
                inside[i, j] = True
            offset[i, j] = j // dilation - i // dilation + kernel - 1
    return inside, offset


def reference_na2d(q, k, v, kernel, dilation, rpb=None):
    """Full N x N attention with a -inf mask outside each query's neighborhood."""
    bsz, height, width, heads, dim = q.shape
    kh, kw = kernel
    rows, row_off = _axis_window(height, kh, dilation[0])
    cols, col_off = _axis_window(width, kw, dilation[1])
    allowed = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(height * width, -1)
    logits = torch.einsum("bnhd,bmhd->bhnm", q.reshape(bsz, -1, heads, dim),
                          k.reshape(bsz, -1, heads, dim)) * dim ** -0.5
    if rpb is not None:
        index = (row_off[:, None, :, None] * (2 * kw - 1) + col_off[None, :, None, :])
        index = index.reshape(height * width, -1).clamp(0, (2 * kh - 1) * (2 * kw - 1) - 1)
        logits = logits + rpb.reshape(heads, -1)[:, index][None]
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), v.reshape(bsz, -1, heads, dim))
    return out.reshape(bsz, height, width, heads, dim)


def _qkv(shape, dtype=torch.float32, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(grad) for _ in range(3)]


NATTEN_CASES = [
    # (H, W), kernel, dilation
    ((20, 28), 3, 1),
    ((20, 28), 3, 2),
    ((20, 28), 3, 4),
    ((20, 28), 7, 1),
    ((20, 28), 7, 2),
    ((29, 30), 7, 4),
    ((20, 28), 13, 1),
    ((27, 29), 13, 2),
    ((13, 14), 13, 1),
    ((21, 18), (3, 5), (4, 3)),
    ((17, 23), (7, 3), (2, 1)),
]


@pytest.mark.parametrize("size,kernel,dilation", NATTEN_CASES)
def test_matches_natten(size, kernel, dilation):
    natten = pytest.importorskip("natten")
    q, k, v = _qkv((2, *size, 2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex attention warns that it runs uncompiled on CPU
        expected = natten.na2d(q, k, v, kernel, dilation=dilation)
    out = na2d(q, k, v, kernel, dilation=dilation)
    assert out.shape == q.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_reference_matches_natten():
    """The masked reference used for gradients agrees with natten: same borders, same groups."""
    natten = pytest.importorskip("natten")
    q, k, v = _qkv((1, 11, 14, 2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = natten.na2d(q, k, v, (3, 5), dilation=(3, 2))
    torch.testing.assert_close(reference_na2d(q, k, v, (3, 5), (3, 2)), expected,
                               atol=1e-5, rtol=1e-5)


GRAD_CASES = [
    ((9, 11), (3, 3), (1, 1)),
    ((12, 10), (5, 3), (2, 3)),
    ((14, 15), (7, 7), (2, 2)),
    ((7, 9), (7, 5), (1, 1)),
    ((6, 8), (1, 3), (1, 2)),
]


@pytest.mark.parametrize("use_rpb", [False, True])
@pytest.mark.parametrize("size,kernel,dilation", GRAD_CASES)
def test_forward_and_grads_match_masked_reference(size, kernel, dilation, use_rpb):
    heads = 2
    q, k, v = _qkv((2, *size, heads, 4), dtype=torch.float64, seed=1, grad=True)
    rpb = None
    if use_rpb:
        gen = torch.Generator().manual_seed(2)
        rpb = torch.randn(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=gen,
                          dtype=torch.float64, requires_grad=True)
    inputs = [q, k, v] + ([rpb] if use_rpb else [])
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(q.shape, generator=gen, dtype=torch.float64)

    out = na2d(q, k, v, kernel, dilation=dilation, rpb=rpb)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    expected = reference_na2d(q, k, v, kernel, dilation, rpb)
    expected_grads = torch.autograd.grad((expected * weight).sum(), inputs)

    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)
    for name, got, want in zip("qkvr", grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8, msg=f"grad {name}")


def test_rpb_without_autograd_matches_reference():
    """No gradient needed: the rpb mask goes through the fused CPU kernels instead of autograd."""
    q, k, v = _qkv((1, 13, 17, 3, 8), dtype=torch.float64, seed=5)
    rpb = torch.randn(3, 9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = na2d(q, k, v, (5, 3), dilation=(2, 4), rpb=rpb)
    torch.testing.assert_close(out, reference_na2d(q, k, v, (5, 3), (2, 4), rpb),
                               atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 13])
def test_tiles_hold_every_neighborhood(kernel):
    """Every real query keeps exactly its k window keys inside its tile, for all map lengths."""
    for length in range(kernel, kernel + 40):
        for tile in (1, 4, 8, 16):
            cols = column_tiles(length, kernel, tile)
            query = torch.arange(cols.count)[:, None] * cols.tile - cols.delta + torch.arange(
                cols.tile)
            real = (query >= 0) & (query < length)
            assert (cols.valid.sum(-1)[real] == kernel).all(), (length, tile)
            assert (cols.valid.sum(-1) > 0).all(), (length, tile)  # no empty softmax row
            assert real.sum() == length and torch.unique(query[real]).numel() == length
            rows = row_tiles(length, kernel, tile)
            assert rows.count * rows.tile >= length - 2 * (kernel // 2)
            assert (rows.valid_main.sum(-1) == kernel).all()


def test_float32_grads_and_batch_independence():
    q, k, v = _qkv((3, 16, 20, 2, 8), seed=4, grad=True)
    out = na2d(q, k, v, 5, dilation=(2, 3))
    (out ** 2).sum().backward()
    q2, k2, v2 = (t.detach()[1:2].clone().requires_grad_() for t in (q, k, v))
    out2 = reference_na2d(q2, k2, v2, (5, 5), (2, 3))
    (out2 ** 2).sum().backward()
    torch.testing.assert_close(out[1:2], out2, atol=1e-5, rtol=1e-5)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad[1:2], b.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(kernel_size=4), "odd"),
    (dict(kernel_size=(3, 0)), "odd"),
    (dict(kernel_size=3, dilation=0), "dilation"),
    (dict(kernel_size=5, dilation=(1, 3)), "5 \\* 3 = 15 exceeds the map width 12"),
    (dict(kernel_size=11), "11 \\* 1 = 11 exceeds the map height 10"),
    (dict(kernel_size=(3, 3, 3)), "pair"),
    (dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)),
     r"rpb must have shape .* = \(2, 5, 5\), got \(2, 3, 3\)"),
])
def test_bad_arguments(kwargs, message):
    q, k, v = _qkv((1, 10, 12, 2, 4))
    with pytest.raises(ValueError, match=message):
        na2d(q, k, v, **kwargs)


def test_bad_tensors():
    q, k, v = _qkv((1, 10, 12, 2, 4))
    with pytest.raises(ValueError, match="query must be"):
        na2d(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match="key shape"):
        na2d(q, k[:, :9], v, 3)
    with pytest.raises(ValueError, match="value is torch.float64"):
        na2d(q, k, v.double(), 3)
