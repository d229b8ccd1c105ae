"""Neighborhood attention ``densevit.ops.na2d`` (CPU) against natten's ``na2d`` and against plain
7x7 window attention through SDPA, at 56x56 and 128x128, kernel 7, dilation 1 and 4, batch 1,
4 heads x 32 dims, float32: forward (no grad) and forward + backward.

natten >= 0.20 runs on CPU through FlexAttention without compilation (forward only, its backward
is refused on CPU), so it is measured for the forward only; at 128x128 it takes ~47 s and ~14 GB
and is skipped in quick mode. Window attention (non-overlapping 7x7 windows, the map zero-padded
to a multiple of 7, one SDPA call) is the cheapest local attention and the speed target; it does
not depend on the dilation, so it is measured once per size and mode.

Each (implementation, size, dilation, mode) runs in its own subprocess: time is the median of
REPEATS runs after one warm-up (wall clock, plus process CPU time, which shared machines disturb
less); memory is read from /proc (VmHWM, reset with clear_refs once the inputs exist): ``peak_mb``
is the subprocess's peak resident size, ``extra_mb`` that peak minus the resident size before the
first run, i.e. what the op itself allocates (ru_maxrss of the whole process off Linux).
``ratio`` = reference_s / ours_s (above 1: ours is faster). Forward rows against natten also
report ``max_abs_diff`` of the two outputs.

Run alone: ``python tools/benchmarks/na2d.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
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


def _rss_mb(field: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    raise OSError(f'{field} not in /proc/self/status')


def _reset_peak() -> float:
    """Restart the peak-RSS count from now; returns the current resident size in MB."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _rss_mb('VmRSS')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb() -> float:
    try:
        return _rss_mb('VmHWM')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(impl: str, size: int, dilation: int, mode: str, repeats: int, out: str) -> None:
    """Subprocess body: time ``repeats`` runs after a warm-up, write times / memory / output."""
    op = _op(impl, dilation)
    gen = torch.Generator().manual_seed(0)
    backward = mode == 'fwd+bwd'
    q, k, v = (torch.randn(1, size, size, HEADS, HEAD_DIM, generator=gen).requires_grad_(backward)
               for _ in range(3))
    grad = torch.randn(q.shape, generator=gen)

    def step() -> torch.Tensor:
        if not backward:
            with torch.no_grad():
                return op(q, k, v)
        for t in (q, k, v):
            t.grad = None
        result = op(q, k, v)
        result.backward(grad)
        return result.detach()

    resident = _reset_peak()
    times, cpu_times = [], []
    for i in range(repeats + (1 if repeats > 1 else 0)):  # one warm-up unless a single run
        start, cpu_start = time.perf_counter(), time.process_time()
        output = step()
        if i or repeats == 1:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = _peak_mb()
    if not backward:
        torch.save(output, out + '.pt')
    with open(out, 'w') as f:
        json.dump(dict(seconds=statistics.median(times), cpu_seconds=statistics.median(cpu_times),
                       peak_mb=peak, extra_mb=peak - resident), f)


def _measure(impl: str, size: int, dilation: int, mode: str, repeats: int, tmp: str) -> dict:
    out = osp.join(tmp, f'{impl}_{size}_{dilation}_{mode}.json')
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    subprocess.run([sys.executable, osp.abspath(__file__), '--worker', impl, str(size),
                    str(dilation), mode, str(repeats), out], check=True, env=env)
    with open(out) as f:
        result = json.load(f)
    if mode == 'fwd':
        result['output'] = torch.load(out + '.pt', weights_only=True)
    return result


def _natten_available() -> bool:
    try:
        import natten  # noqa: F401
    except ImportError:
        return False
    return True


def run(quick: bool = False) -> list[dict]:
    repeats = 3 if quick else 5
    has_natten = _natten_available()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            windows = {mode: _measure('window', size, 1, mode, repeats, tmp) for mode in MODES}
            for dilation in DILATIONS:
                for mode in MODES:
                    ours = _measure('ours', size, dilation, mode, repeats, tmp)
                    refs = [('sdpa 7x7 windows', windows[mode])]
                    if mode == 'fwd' and has_natten and not (quick and size > 56):
                        natten_repeats = 1 if size > 56 else repeats
                        refs.append(('natten (cpu)', _measure('natten', size, dilation, mode,
                                                              natten_repeats, tmp)))
                    for name, ref in refs:
                        row = dict(
                            case=f'na2d {size}x{size} k{KERNEL} d{dilation} {mode}',
                            ours_s=ours['seconds'], reference=name, reference_s=ref['seconds'],
                            ratio=ref['seconds'] / ours['seconds'],
                            ours_cpu_s=ours['cpu_seconds'], reference_cpu_s=ref['cpu_seconds'],
                            ours_peak_mb=ours['peak_mb'], reference_peak_mb=ref['peak_mb'],
                            ours_extra_mb=ours['extra_mb'], reference_extra_mb=ref['extra_mb'],
                            threads=torch.get_num_threads())
                        if name.startswith('natten'):
                            diff = (ours['output'] - ref['output']).abs().max().item()
                            row['max_abs_diff'] = diff
                        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer repeats, no natten at 128')
    parser.add_argument('--worker', nargs=6, help=argparse.SUPPRESS,
                        metavar=('IMPL', 'SIZE', 'DILATION', 'MODE', 'REPEATS', 'OUT'))
    args = parser.parse_args()
    if args.worker:
        impl, size, dilation, mode, repeats, out = args.worker
        _worker(impl, int(size), int(dilation), mode, int(repeats), out)
        return
    for row in run(quick=args.quick):
        print(row)


if __name__ == '__main__':
    main()
