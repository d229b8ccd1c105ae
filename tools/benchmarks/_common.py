"""The measuring machinery every benchmark topic shares (densevit issue 13: each figure is a
ratio taken in one run, ours and the reference interleaved, the median of several repetitions
after a warm-up, peak memory from a fresh process per case).

- ``interleaved`` times several callables in one process, alternating them so that a change in
  the machine's load falls on all of them alike: the median of the wall clock and of the process
  CPU time (which a shared machine disturbs less).
- ``fresh_process`` runs a topic's ``--worker`` entry (or any ``python`` argument list) in a new
  interpreter and returns the dict the worker wrote with ``write_result``. A worker measures one
  step's memory with ``measure_peak``: the peak resident size during the step (VmHWM, reset just
  before it through /proc/self/clear_refs; ru_maxrss of the whole process off Linux), the
  resident size before it (interpreter, torch, weights and inputs) and ``extra_mb``, their
  difference: what the step itself allocates.
- ``argument_parser`` and ``print_rows``: the command line every topic has when run alone.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
REPO = osp.dirname(TOOLS)


# ------------------------------------------------------------------ timing

def process_clock() -> tuple[float, float]:
    """(wall clock, process CPU time) in seconds, the two clocks every benchmark reads."""
    return time.perf_counter(), time.process_time()


@dataclass
class Timing:
    """One callable's times from ``interleaved``: medians, every run, and its last output."""
    seconds: float
    cpu_seconds: float
    output: object = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                clock: Callable[[], tuple[float, float]] = process_clock) -> dict[str, Timing]:
    """Time every fn ``repeats`` times, in alternation, after ``warmup`` untimed runs of each.

    The warm-up runs the fns in their given order. Round ``r`` of the timed runs starts with the
    fn at position ``r mod n`` and goes round (A B C, B C A, C A B, ...; for two: A B, B A, A B),
    so no fn always follows the same one. ``clock()`` returns (wall, CPU) seconds; tests pass a
    fake one.

    Returns name -> ``Timing`` (median wall and CPU seconds, the runs, the last output).
    """
    if not fns:
        raise ValueError('interleaved: no functions to time')
    if repeats < 1 or warmup < 0:
        raise ValueError(f'interleaved: repeats must be >= 1 and warmup >= 0, '
                         f'got repeats={repeats}, warmup={warmup}')
    names = list(fns)
    outputs = {}
    for _ in range(warmup):
        for name in names:
            outputs[name] = fns[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeats):
        first = r % len(names)
        for name in names[first:] + names[:first]:
            wall_start, cpu_start = clock()
            outputs[name] = fns[name]()
            wall_end, cpu_end = clock()
            wall[name].append(wall_end - wall_start)
            cpu[name].append(cpu_end - cpu_start)
    return {name: Timing(statistics.median(wall[name]), statistics.median(cpu[name]),
                         outputs[name], wall[name], cpu[name]) for name in names}


# ------------------------------------------------------------------ memory (worker side)

def _status_mb(key: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
    raise OSError(f'no {key} in /proc/self/status')


def reset_peak_mb() -> float:
    """Restart this process's peak resident size from now; returns the resident size in MB.

    Linux only (/proc/self/clear_refs); elsewhere the peak cannot be reset and ru_maxrss, the
    peak of the whole process so far, is returned."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _status_mb('VmRSS')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    """This process's peak resident size in MB since the last ``reset_peak_mb`` (VmHWM;
    ru_maxrss off Linux)."""
    try:
        return _status_mb('VmHWM')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_peak(step: Callable[[], object]) -> tuple[object, dict[str, float]]:
    """Run ``step()`` once; its output and its memory: ``peak_mb`` (peak resident size during
    the step), ``baseline_mb`` (resident size just before) and ``extra_mb`` = peak - baseline."""
    gc.collect()
    baseline = reset_peak_mb()
    output = step()
    peak = peak_mb()
    return output, dict(peak_mb=peak, baseline_mb=baseline, extra_mb=peak - baseline)


# ------------------------------------------------------------------ fresh processes

def op_step(op: Callable, inputs: Sequence, grad, backward: bool):
    """One call of ``op(*inputs)``: without gradients, or forward + backward of ``grad`` into
    the inputs (their old gradients cleared first). Returns the (detached) output."""
    import torch

    if not backward:
        with torch.no_grad():
            return op(*inputs)
    for t in inputs:
        t.grad = None
    result = op(*inputs)
    result.backward(grad)
    return result.detach()


def write_result(out: str, result: dict, tensors: dict | None = None) -> None:
    """Worker side: write ``result`` (JSON values) to ``out`` and ``tensors`` (a dict of
    tensors, or of lists of them) to ``out + '.pt'``; ``fresh_process`` reads both back."""
    if tensors is not None:
        import torch
        torch.save(tensors, out + '.pt')
    with open(out, 'w') as f:
        json.dump(result, f)


def fresh_process(args: Sequence[str], env: dict | None = None) -> dict:
    """Run ``python *args OUT`` in a new interpreter and return what it wrote with
    ``write_result(OUT, ...)``, its tensors merged in under their keys.

    The repository and tools/ go first on the child's PYTHONPATH (so ``densevit`` and
    ``benchmarks.*`` import); ``env`` adds or replaces variables. A failing or killed child
    raises ``subprocess.CalledProcessError`` (a kill by the kernel's out-of-memory handler has
    returncode ``-signal.SIGKILL``).
    """
    child_env = dict(os.environ)
    child_env['PYTHONPATH'] = os.pathsep.join(
        [REPO, TOOLS] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else []))
    child_env.update(env or {})
    with tempfile.TemporaryDirectory() as tmp:
        out = osp.join(tmp, 'result.json')
        subprocess.run([sys.executable, *map(str, args), out], check=True, env=child_env)
        with open(out) as f:
            result = json.load(f)
        if osp.exists(out + '.pt'):
            import torch
            result.update(torch.load(out + '.pt', weights_only=True))
    return result


# ------------------------------------------------------------------ command line

def argument_parser(doc: str, quick_help: str, tiny: bool = False,
                    worker: bool = True) -> argparse.ArgumentParser:
    """A topic's command line: ``--quick``, with ``worker`` the hidden ``--worker ARG ... OUT``
    of its fresh processes and with ``tiny`` ``--tiny`` (the smallest sizes, for the harness's
    tests)."""
    parser = argparse.ArgumentParser(description=doc.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help=quick_help)
    if tiny:
        parser.add_argument('--tiny', action='store_true',
                            help='the smallest sizes and fewest repetitions (a test of the '
                                 'harness, not a measurement)')
    if worker:
        parser.add_argument('--worker', nargs='+', help=argparse.SUPPRESS)
    return parser


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        print(row)
