"""The segmentation loss, forward + backward: densevit's ``SegCriterion`` (cross-entropy of
logits resized to the labels, through ``upsampled_cross_entropy``) against the resize ->
cross-entropy chain of torch ops that mmseg's and transformers' UperNets run (``F.interpolate``,
bilinear, then ``F.cross_entropy`` with ignore_index 255), 150 classes:

- UperNet training at 512x512: logits (2, 150, 128, 128) to labels (2, 512, 512);
- the quickstart: logits (8, 150, 32, 32) to labels (8, 128, 128).

Timing (tools/benchmarks/_common.py): both losses in one worker process on the same logits and
labels, interleaved, median of REPEATS after a warm-up; memory from a fresh process per
implementation running one step (``added_mb``: the step's peak resident size above the size
before it). The losses and the gradients of the two are compared in the timing worker.
``time_ratio`` and ``memory_ratio`` are ours / reference (below 1: ours is faster / smaller).

Run alone: ``python tools/benchmarks/seg_loss.py [--quick]`` (``--quick``: the quickstart case
only; ``--tiny``: (2, 150, 8, 8) to (2, 32, 32), a test of the harness).
"""
from __future__ import annotations

import os.path as osp
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (argument_parser, fresh_process, interleaved,  # noqa: E402
                                measure_peak, print_rows, write_result)

CLASSES = 150
REPEATS = 5
# name -> (batch, logits side, label side)
CASES = {'upernet-512': (2, 128, 512), 'quickstart-128': (8, 32, 128), 'tiny': (2, 8, 32)}
IMPLS = ('densevit', 'reference')


def _inputs(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch, side, label_side = CASES[case]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, CLASSES, side, side, generator=gen)
    labels = torch.randint(0, CLASSES, (batch, label_side, label_side), generator=gen)
    labels[:, :label_side // 16] = 255  # an ignored band, as padding leaves
    return logits, labels


def _loss(impl: str, labels: torch.Tensor):
    """``loss(logits) -> scalar`` of one implementation."""
    if impl == 'densevit':
        from densevit.models.losses import SegCriterion
        from densevit.structures import DataSample, PixelData
        criterion = SegCriterion(loss_decode=dict(type='CrossEntropyLoss'))
        samples = [DataSample(gt_sem_seg=PixelData(data=label[None])) for label in labels]
        return lambda logits: criterion(logits, samples)['loss_ce']
    if impl == 'reference':
        def loss(logits: torch.Tensor) -> torch.Tensor:
            resized = F.interpolate(logits, size=labels.shape[-2:], mode='bilinear',
                                    align_corners=False)
            return F.cross_entropy(resized, labels, ignore_index=255)
        return loss
    raise ValueError(f'unknown implementation {impl!r}; choose from {IMPLS}')


def _step(loss, logits: torch.Tensor) -> tuple[float, torch.Tensor]:
    source = logits.clone().requires_grad_()
    value = loss(source)
    value.backward()
    return value.item(), source.grad


def _worker(mode: str, case: str, impl: str, repeats: int, out: str) -> None:
    logits, labels = _inputs(case)
    if mode == 'memory':
        loss = _loss(impl, labels)
        _, memory = measure_peak(lambda: _step(loss, logits))
        write_result(out, memory)
        return
    losses = {name: _loss(name, labels) for name in IMPLS}
    timings = interleaved({name: lambda name=name: _step(losses[name], logits)
                           for name in IMPLS}, repeats)
    (ours, ours_grad), (ref, ref_grad) = (timings[name].output for name in IMPLS)
    write_result(out, dict(
        ours_s=timings['densevit'].seconds, reference_s=timings['reference'].seconds,
        ours_cpu_s=timings['densevit'].cpu_seconds,
        reference_cpu_s=timings['reference'].cpu_seconds,
        loss_diff=abs(ours - ref), max_abs_grad_diff=float((ours_grad - ref_grad).abs().max())))


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    cases = ['tiny'] if tiny else ['quickstart-128'] if quick else list(CASES)[:2]
    rows = []
    for case in cases:
        script = osp.abspath(__file__)
        timing = fresh_process([script, '--worker', 'time', case, 'both', 1 if tiny else REPEATS])
        memory = {impl: fresh_process([script, '--worker', 'memory', case, impl, 1])['extra_mb']
                  for impl in IMPLS}
        batch, side, label_side = CASES[case]
        rows.append(dict(
            case=f'{CLASSES}-class loss, ({batch}, {CLASSES}, {side}, {side}) to '
                 f'{label_side}x{label_side}, forward + backward',
            ours_s=timing['ours_s'], reference_s=timing['reference_s'],
            time_ratio=timing['ours_s'] / timing['reference_s'],
            ours_cpu_s=timing['ours_cpu_s'], reference_cpu_s=timing['reference_cpu_s'],
            ours_added_mb=memory['densevit'], reference_added_mb=memory['reference'],
            memory_ratio=(memory['densevit'] / memory['reference'] if memory['reference'] > 0
                          else float('nan')),
            loss_diff=timing['loss_diff'], max_abs_grad_diff=timing['max_abs_grad_diff'],
            threads=torch.get_num_threads()))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, 'the quickstart case only', tiny=True).parse_args(argv)
    if args.worker:
        mode, case, impl, repeats, out = args.worker
        _worker(mode, case, impl, int(repeats), out)
        return
    print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
