"""Neighborhood attention ``densevit.ops.na2d`` (CPU) against natten's ``na2d`` and against plain
7x7 window attention through SDPA, at 56x56 and 128x128, kernel 7, dilation 1 and 4, batch 1,
4 heads x 32 dims, float32: forward (no grad) and forward + backward.

natten >= 0.20 runs on CPU through FlexAttention without compilation (forward only, its backward
is refused on CPU), so it is measured for the forward only; at 128x128 it takes ~47 s and ~14 GB
and is skipped in quick mode. Window attention (non-overlapping 7x7 windows, the map zero-padded
to a multiple of 7, one SDPA call) is the cheapest local attention and the speed target; it does
not depend on the dilation, so its memory is measured once per size and mode (its time with each
dilation's case, interleaved with ours).

For each (size, dilation, mode) one worker process builds the inputs once and times ours, the
windows and natten interleaved (tools/benchmarks/_common.py): the median of REPEATS runs of each
after one warm-up, the order rotating (wall clock, plus process CPU time, which shared machines
disturb less); forward rows against natten report ``max_abs_diff`` of the two outputs, taken
there. natten at 128x128 (~47 s a run) is the exception: it runs once, in its memory process, and
is timed there. Memory comes from a fresh process per (implementation, size, dilation, mode)
running one step, read from /proc (VmHWM, reset with clear_refs once the inputs exist):
``peak_mb`` is that process's peak resident size, ``extra_mb`` that peak minus the resident size
before the step, i.e. what the op itself allocates (ru_maxrss of the whole process off Linux).
``ratio`` = reference_s / ours_s (above 1: ours is faster).

Run alone: ``python tools/benchmarks/na2d.py [--quick]`` (``--tiny``: 28x28, one repetition, a
test of the harness).
"""
from __future__ import annotations

import os.path as osp
import sys
import time
import warnings
from functools import partial

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (argument_parser, fresh_process, interleaved,  # noqa: E402
                                measure_peak, op_step, print_rows, write_result)

KERNEL, HEADS, HEAD_DIM = 7, 4, 32
SIZES, DILATIONS, MODES = (56, 128), (1, 4), ('fwd', 'fwd+bwd')


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     window: int = KERNEL) -> torch.Tensor:
    """Attention inside non-overlapping ``window x window`` tiles (B, H, W, heads, E) via SDPA."""
    bsz, height, width, heads, dim = q.shape
    rows, cols = -(-height // window), -(-width // window)

    def partition(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, cols * window - width, 0, rows * window - height))
        x = x.view(bsz, rows, window, cols, window, heads, dim)
        # (B, nh, ws, nw, ws, heads, E) -> (B*nh*nw, heads, ws*ws, E)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, window * window, dim)

    out = F.scaled_dot_product_attention(partition(q), partition(k), partition(v))
    out = out.view(bsz, rows, cols, heads, window, window, dim)
    # (B, nh, nw, heads, ws, ws, E) -> (B, H, W, heads, E)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(bsz, rows * window, cols * window, heads, dim)
    return out[:, :height, :width]


def _op(impl: str, dilation: int):
    if impl == 'ours':
        from densevit.ops import na2d
        return lambda q, k, v: na2d(q, k, v, KERNEL, dilation=dilation)
    if impl == 'natten':
        import natten
        warnings.filterwarnings('ignore')  # flex attention warns that it runs uncompiled
        return lambda q, k, v: natten.na2d(q, k, v, KERNEL, dilation=dilation)
    if impl == 'window':
        return window_attention
    raise ValueError(f"unknown implementation {impl!r}; choose from 'ours', 'natten', 'window'")


def _inputs(size: int, backward: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Seeded q, k, v (1, size, size, HEADS, HEAD_DIM) and the output gradient."""
    gen = torch.Generator().manual_seed(0)
    qkv = [torch.randn(1, size, size, HEADS, HEAD_DIM, generator=gen).requires_grad_(backward)
           for _ in range(3)]
    return qkv, torch.randn(qkv[0].shape, generator=gen)


def _time_worker(impls: str, size: int, dilation: int, mode: str, repeats: int,
                 out: str) -> None:
    """Worker body: the comma-separated ``impls`` on the same inputs, timed interleaved."""
    backward = mode == 'fwd+bwd'
    qkv, grad = _inputs(size, backward)
    timings = interleaved({impl: partial(op_step, _op(impl, dilation), qkv, grad, backward)
                           for impl in impls.split(',')}, repeats)
    result = {impl: dict(seconds=t.seconds, cpu_seconds=t.cpu_seconds)
              for impl, t in timings.items()}
    if 'natten' in timings:
        result['natten']['max_abs_diff'] = (
            timings['ours'].output - timings['natten'].output).abs().max().item()
    write_result(out, result)


def _memory_worker(impl: str, size: int, dilation: int, mode: str, out: str) -> None:
    """Worker body: the memory (and the time) of one step of ``impl``."""
    backward = mode == 'fwd+bwd'
    qkv, grad = _inputs(size, backward)
    op = _op(impl, dilation)
    times = {}

    def step():
        start, cpu_start = time.perf_counter(), time.process_time()
        op_step(op, qkv, grad, backward)
        times.update(seconds=time.perf_counter() - start,
                     cpu_seconds=time.process_time() - cpu_start)

    _, memory = measure_peak(step)
    write_result(out, dict(memory, **times))


def _natten_available() -> bool:
    try:
        import natten  # noqa: F401
    except ImportError:
        return False
    return True


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    repeats = 1 if tiny else 3 if quick else 5
    sizes = (KERNEL * max(DILATIONS),) if tiny else SIZES
    has_natten = _natten_available()
    script = osp.abspath(__file__)

    def memory(impl: str, size: int, dilation: int, mode: str) -> dict:
        return fresh_process([script, '--worker', 'memory', impl, size, dilation, mode])

    rows = []
    for size in sizes:
        windows = {mode: memory('window', size, 1, mode) for mode in MODES}
        for dilation in DILATIONS:
            for mode in MODES:
                with_natten = mode == 'fwd' and has_natten and not (quick and size > 56)
                interleave = ['ours', 'window'] + (['natten'] if with_natten and size <= 56
                                                   else [])
                times = fresh_process([script, '--worker', 'time', ','.join(interleave), size,
                                       dilation, mode, repeats])
                ours = dict(memory('ours', size, dilation, mode), **times['ours'])
                refs = [('sdpa 7x7 windows', dict(windows[mode], **times['window']))]
                if with_natten:  # beyond 56, natten's single run in its memory process
                    natten = memory('natten', size, dilation, mode)
                    refs.append(('natten (cpu)', dict(natten, **times.get('natten', {}))))
                for name, ref in refs:
                    row = dict(
                        case=f'na2d {size}x{size} k{KERNEL} d{dilation} {mode}',
                        ours_s=ours['seconds'], reference=name, reference_s=ref['seconds'],
                        ratio=ref['seconds'] / ours['seconds'],
                        ours_cpu_s=ours['cpu_seconds'], reference_cpu_s=ref['cpu_seconds'],
                        ours_peak_mb=ours['peak_mb'], reference_peak_mb=ref['peak_mb'],
                        ours_extra_mb=ours['extra_mb'], reference_extra_mb=ref['extra_mb'],
                        threads=torch.get_num_threads())
                    if name.startswith('natten') and 'max_abs_diff' in ref:
                        row['max_abs_diff'] = ref['max_abs_diff']
                    rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, 'fewer repeats, no natten at 128', tiny=True).parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == 'time':
            impls, size, dilation, mode, repeats, out = rest
            _time_worker(impls, int(size), int(dilation), mode, int(repeats), out)
        else:
            impl, size, dilation, mode, out = rest
            _memory_worker(impl, int(size), int(dilation), mode, out)
        return
    print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
