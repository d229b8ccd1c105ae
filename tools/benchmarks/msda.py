"""Multi-scale deformable attention ``densevit.ops.multi_scale_deformable_attention`` (CPU) against
the pure-PyTorch path of transformers' Deformable DETR (``MultiScaleDeformableAttention``, the
grid_sample port of ``ms_deform_attn_core_pytorch``), float32, forward (no grad) and forward +
backward (gradients of value, sampling locations and attention weights).

Sizes are DINO's defaults on a 1024x1024 image: batch 2, 8 heads x 32 dims, 4 points, the four
levels at strides 8-64 (128x128, 64x64, 32x32, 16x16 = 21760 positions). ``decoder`` is the
cross-attention of 900 queries + 200 denoising queries, run with torch's default threads and with
one thread; ``encoder`` (full run only, default threads) is the encoder's self-attention, one
query per position, where the samples dominate the memory. On a machine shared with other work
every multi-threaded kernel may wait a scheduler slice for its second thread, so the
default-thread times of the decoder case swing with the load and follow the number of kernels
(forward without grad, at these sizes: ours 20, the reference 23; forward + backward: ours 73,
the reference 59); the one-thread rows compare the work itself.
Sampling locations are uniform in [-0.05, 1.05], attention weights a softmax over levels * points.

Each (implementation, case, mode) runs in its own subprocess, several rounds (``RUNS``),
alternating ours and the reference; every subprocess times a few runs after one warm-up. Time is
the median over all runs (wall clock, plus process CPU time, which shared machines disturb less).
Memory is read from /proc (``measure_peak`` of tools/benchmarks/_common.py, around the warm-up and
the runs): ``peak_mb`` is the subprocess's peak resident size, ``extra_mb`` that peak minus the
resident size once the inputs exist. With glibc's default malloc that peak also holds freed blocks
the allocator keeps (it raises its mmap threshold as blocks are freed), so one more subprocess per
implementation and round runs with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB: every large tensor
is then mapped and unmapped on its own and ``live_mb``, its extra peak, is what the op's live
tensors need (outputs and gradients included). Memory figures are medians over the rounds.
``ratio`` = reference_s / ours_s and ``mem_ratio`` = reference_live_mb / ours_live_mb (above 1:
ours is faster / smaller). Forward rows report ``max_abs_diff`` of the two outputs.

Run alone: ``python tools/benchmarks/msda.py [--quick]`` (``--tiny``: the decoder case, default
threads, one run per subprocess and one round, a test of the harness).
"""
from __future__ import annotations

import os.path as osp
import statistics
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (argument_parser, fresh_process, interleaved,  # noqa: E402
                                measure_peak, op_step, print_rows, write_result)

BATCH, HEADS, HEAD_DIM, POINTS = 2, 8, 32, 4
SHAPES = ((128, 128), (64, 64), (32, 32), (16, 16))
CASES = {'decoder': 900 + 200, 'encoder': sum(h * w for h, w in SHAPES)}
MODES = ('fwd', 'fwd+bwd')
# (timed runs per subprocess, rounds) per case; quick runs the decoder at (3, 2)
RUNS = {'decoder': (5, 5), 'encoder': (2, 3)}
# (case, threads): 0 = torch's default; one thread shows the work without thread sync
SETTINGS = (('decoder', 0), ('decoder', 1), ('encoder', 0))


def _op(impl: str):
    shapes = torch.tensor(SHAPES)
    if impl == 'ours':
        from densevit.ops import multi_scale_deformable_attention
        return lambda value, loc, weights: multi_scale_deformable_attention(
            value, shapes, loc, weights)
    if impl == 'transformers':
        from transformers.models.deformable_detr.modeling_deformable_detr import (
            MultiScaleDeformableAttention)
        reference = MultiScaleDeformableAttention()
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        return lambda value, loc, weights: reference(value, shapes, list(SHAPES), starts, loc,
                                                     weights, 64)
    raise ValueError(f"unknown implementation {impl!r}; choose from 'ours', 'transformers'")


def _worker(impl: str, case: str, mode: str, threads: int, repeats: int, out: str) -> None:
    """Worker body: time ``repeats`` runs after a warm-up, write times / memory / output."""
    if threads:
        torch.set_num_threads(threads)
    op = _op(impl)
    queries, levels = CASES[case], len(SHAPES)
    gen = torch.Generator().manual_seed(0)
    backward = mode == 'fwd+bwd'
    value = torch.randn(BATCH, sum(h * w for h, w in SHAPES), HEADS, HEAD_DIM, generator=gen)
    loc = torch.rand(BATCH, queries, HEADS, levels, POINTS, 2, generator=gen) * 1.1 - 0.05
    weights = torch.randn(BATCH, queries, HEADS, levels * POINTS, generator=gen).softmax(-1)
    weights = weights.view(BATCH, queries, HEADS, levels, POINTS)
    inputs = [t.requires_grad_(backward) for t in (value, loc, weights)]
    grad = torch.randn(BATCH, queries, HEADS * HEAD_DIM, generator=gen)

    timings, memory = measure_peak(lambda: interleaved(
        {impl: lambda: op_step(op, inputs, grad, backward)}, repeats))
    timing = timings[impl]
    write_result(out, dict(times=timing.wall, cpu_times=timing.cpu, peak_mb=memory['peak_mb'],
                           extra_mb=memory['extra_mb']),
                 dict(output=timing.output) if not backward else None)


def _measure(impl: str, case: str, mode: str, threads: int, repeats: int,
             live: bool = False) -> dict:
    # live, glibc: map every block above 128 KiB on its own, so freed tensors leave the RSS
    return fresh_process([osp.abspath(__file__), '--worker', impl, case, mode, threads, repeats],
                         env=dict(MALLOC_MMAP_THRESHOLD_=str(128 * 1024)) if live else None)


def _rounds(case: str, mode: str, threads: int, repeats: int, rounds: int) -> dict[str, dict]:
    """Alternate the implementations ``rounds`` times; median time over all runs, median memory."""
    runs = {'ours': [], 'transformers': []}
    live = {'ours': [], 'transformers': []}
    for _ in range(rounds):
        for impl in runs:
            runs[impl].append(_measure(impl, case, mode, threads, repeats))
            live[impl].append(_measure(impl, case, mode, threads, 1, live=True)['extra_mb'])
    summary = {}
    for impl, results in runs.items():
        summary[impl] = dict(
            seconds=statistics.median(t for r in results for t in r['times']),
            cpu_seconds=statistics.median(t for r in results for t in r['cpu_times']),
            peak_mb=statistics.median(r['peak_mb'] for r in results),
            extra_mb=statistics.median(r['extra_mb'] for r in results),
            live_mb=statistics.median(live[impl]), output=results[-1].get('output'))
    return summary


def run(quick: bool = False, only: tuple[str, ...] = (), tiny: bool = False) -> list[dict]:
    """All rows, or those whose ``case/threads/mode`` name (e.g. ``decoder/0/fwd+bwd``) is in
    ``only``."""
    settings = SETTINGS[:1] if tiny else SETTINGS[:2] if quick else SETTINGS
    rows = []
    for case, threads in settings:
        for mode in MODES:
            if only and f'{case}/{threads}/{mode}' not in only:
                continue
            repeats, rounds = (1, 1) if tiny else (3, 2) if quick else RUNS[case]
            result = _rounds(case, mode, threads, repeats, rounds)
            ours, ref = result['ours'], result['transformers']
            row = dict(
                case=f'msda {case} B{BATCH} Q{CASES[case]} {mode}', ours_s=ours['seconds'],
                reference='transformers (pure PyTorch)', reference_s=ref['seconds'],
                ratio=ref['seconds'] / ours['seconds'], ours_cpu_s=ours['cpu_seconds'],
                reference_cpu_s=ref['cpu_seconds'], ours_peak_mb=ours['peak_mb'],
                reference_peak_mb=ref['peak_mb'], ours_extra_mb=ours['extra_mb'],
                reference_extra_mb=ref['extra_mb'], ours_live_mb=ours['live_mb'],
                reference_live_mb=ref['live_mb'],
                mem_ratio=ref['live_mb'] / max(ours['live_mb'], 1e-3),
                threads=threads or torch.get_num_threads())
            if mode == 'fwd':
                row['max_abs_diff'] = (ours['output'] - ref['output']).abs().max().item()
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__, 'decoder case only, fewer runs', tiny=True)
    parser.add_argument('--only', nargs='+', default=(), metavar='CASE/THREADS/MODE',
                        help='run only these rows, e.g. decoder/0/fwd+bwd (threads 0 = default)')
    args = parser.parse_args(argv)
    if args.worker:
        impl, case, mode, threads, repeats, out = args.worker
        _worker(impl, case, mode, int(threads), int(repeats), out)
        return
    rows = [f'{case}/{threads}/{mode}' for case, threads in SETTINGS for mode in MODES]
    unknown = [name for name in args.only if name not in rows]
    if unknown:
        parser.error(f'--only: unknown rows {unknown}; choose from {rows}')
    print_rows(run(quick=args.quick, only=tuple(args.only), tiny=args.tiny))


if __name__ == '__main__':
    main()
