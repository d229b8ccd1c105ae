"""How backbone cost grows with image size: Swin-T, DiNAT-T and ViTDet-B (batch 1, 2 threads).

1. Swin-T against timm's ``swin_tiny_patch4_window7_224`` (built at each size with
   ``img_size``; its seeded weights go into densevit's Swin through the ``swin`` converter, as
   tests/test_swin.py does; sides of at least 224, below which timm shrinks its windows) at 512
   and 1024 (quick: 256), forward (eval, no grad) and forward + backward (train, the mean of all
   output maps as the loss). DiNAT-T has no reference row: natten >= 0.21 dropped the relative
   position bias DiNAT uses, so natten's op cannot run the same network; ``densevit.ops.na2d``
   against natten's op itself is the na2d topic.
2. Scaling exponents: forward time and the memory the forward allocates, fitted as
   ``log(y) = a + b log(pixels)`` over sides 256, 384, 512, 768, 1024 (quick: 128, 192, 256).
   b = 1 is linear in pixels (windowed and neighbourhood attention); ViTDet-B's four global
   blocks are quadratic in tokens, so its b grows towards 2 with size.

Timing (tools/benchmarks/_common.py): in part 1, Swin-T, timm's Swin-T and DiNAT-T of one size
and mode are built in one worker process and timed interleaved on the same input, the median of
3 repetitions after a warm-up (2 for training at 1024), the order rotating; memory comes from a
fresh process per model running one step: ``peak_mb`` its peak resident size, ``added_mb`` that
peak above the resident size after building (what the step allocates). In part 2 each (model,
side) runs in its own fresh process: the first forward gives the memory, then 3 more the time.

Run alone: ``python tools/benchmarks/scaling.py [--quick]`` (``--tiny``: part 1 at 224, forward
only; part 2 over sides 64 and 96; a test of the harness).
"""
from __future__ import annotations

import os.path as osp
import sys

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (argument_parser, fresh_process, interleaved,  # noqa: E402
                                measure_peak, print_rows, write_result)

MODELS_TIMED = ('swin-t', 'timm-swin-t', 'dinat-t', 'vitdet-b')
REPEATS = 3


def _timm_swin(size: int) -> torch.nn.Module:
    import timm
    torch.manual_seed(0)
    return timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, img_size=size)


def build(name: str, size: int) -> torch.nn.Module:
    """A backbone by benchmark name, for ``size`` x ``size`` inputs."""
    import densevit.models  # noqa: F401  (registers modules)
    from densevit.registry import MODELS
    if name == 'swin-t':
        from densevit.checkpoint.loading import load_state_dict
        from densevit.checkpoint.swin import convert_swin
        model = MODELS.build(dict(type='Swin', arch='tiny'))
        report = load_state_dict(model, convert_swin(_timm_swin(size).state_dict()), log=False)
        # densevit's per-level output norms are its own (identity at initialisation)
        if any(not k.startswith('out_norms.') for k in report.missing) or report.unexpected:
            raise RuntimeError(f'timm Swin-T -> densevit Swin: {report}')
        return model
    if name == 'timm-swin-t':
        return _timm_swin(size)
    if name == 'dinat-t':
        return MODELS.build(dict(type='DiNAT', arch='tiny'))
    if name == 'vitdet-b':  # ViTDet's ViT-B: window 14, global blocks 2, 5, 8, 11
        return MODELS.build(dict(type='ViT', arch='base', img_size=size, window_size=14))
    raise ValueError(f'unknown model {name!r}; choose from {MODELS_TIMED}')


def features(name: str, model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    if name == 'timm-swin-t':
        return model.forward_intermediates(images, intermediates_only=True)
    return list(model(images).values())


def _step(name: str, mode: str, size: int):
    """The model ``name`` built for ``size`` and its step: a forward without grad (mode
    'forward') or forward + backward of the mean of all maps (mode 'train')."""
    model = build(name, size)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    if mode == 'forward':
        model.eval()

        def step():
            with torch.no_grad():
                return features(name, model, images)
    else:
        model.train()

        def step():
            maps = features(name, model, images)
            sum(m.mean() for m in maps).backward()
            model.zero_grad(set_to_none=True)
            return [m.detach() for m in maps]
    return step


def _memory_result(memory: dict) -> dict:
    return dict(peak_mb=memory['peak_mb'], added_mb=memory['extra_mb'])


def _time_worker(names: str, mode: str, size: int, repeats: int, out: str) -> None:
    """Worker body: the comma-separated models, built here, timed interleaved."""
    timings = interleaved({name: _step(name, mode, size) for name in names.split(',')}, repeats)
    write_result(out, {name: dict(seconds=t.seconds, cpu_seconds=t.cpu_seconds)
                       for name, t in timings.items()})


def _memory_worker(name: str, mode: str, size: int, out: str) -> None:
    """Worker body: the memory of one step."""
    _, memory = measure_peak(_step(name, mode, size))
    write_result(out, _memory_result(memory))


def _solo_worker(name: str, mode: str, size: int, repeats: int, out: str) -> None:
    """Worker body: the memory of the first step, then the time of ``repeats`` more."""
    step = _step(name, mode, size)
    _, memory = measure_peak(step)
    timing = interleaved({name: step}, repeats, warmup=0)[name]
    write_result(out, dict(_memory_result(memory), seconds=timing.seconds,
                           cpu_seconds=timing.cpu_seconds))


def exponent(sizes: list[int], values: list[float]) -> float:
    """Slope b of the least-squares fit log(value) = a + b log(pixels)."""
    return float(np.polyfit(np.log(np.square(sizes)), np.log(values), 1)[0])


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    def worker(*args) -> dict:
        return fresh_process([osp.abspath(__file__), '--worker', *args])

    rows = []
    # 1. Swin-T against timm, same weights; DiNAT-T alone
    for size in ((224,) if tiny else (256,) if quick else (512, 1024)):
        for mode in (('forward',) if tiny else ('forward', 'train')):
            repeats = 2 if mode == 'train' and size >= 1024 else REPEATS
            names = ('swin-t', 'timm-swin-t', 'dinat-t')
            times = worker('time', ','.join(names), mode, size, repeats)
            ours, ref, dinat = ({**times[name], **worker('memory', name, mode, size)}
                                for name in names)
            # outputs differ by densevit's output norms; parity is tests/test_swin.py's
            rows.append(dict(case=f'Swin-T {size} {mode}', ours_s=ours['seconds'],
                             reference='timm', reference_s=ref['seconds'],
                             time_ratio=ours['seconds'] / ref['seconds'],
                             ours_cpu_s=ours['cpu_seconds'],
                             reference_cpu_s=ref['cpu_seconds'],
                             ours_added_mb=ours['added_mb'],
                             reference_added_mb=ref['added_mb'],
                             memory_ratio=ours['added_mb'] / ref['added_mb'],
                             ours_peak_mb=ours['peak_mb'], reference_peak_mb=ref['peak_mb']))
            rows.append(dict(case=f'DiNAT-T {size} {mode}', ours_s=dinat['seconds'],
                             reference='(natten cannot run DiNAT: no rpb)',
                             ours_cpu_s=dinat['cpu_seconds'],
                             ours_added_mb=dinat['added_mb'], ours_peak_mb=dinat['peak_mb']))
    # 2. exponents over image sides
    sides = [64, 96] if tiny else [128, 192, 256] if quick else [256, 384, 512, 768, 1024]
    for name, label in (('swin-t', 'Swin-T'), ('dinat-t', 'DiNAT-T'), ('vitdet-b', 'ViTDet-B')):
        results = [worker('solo', name, 'forward', side, REPEATS) for side in sides]
        rows.append(dict(
            case=f'{label} forward scaling, sides {sides}',
            seconds=' / '.join(f'{r["seconds"]:.3g}' for r in results),
            added_mb=' / '.join(f'{r["added_mb"]:.0f}' for r in results),
            time_exponent=exponent(sides, [r['seconds'] for r in results]),
            cpu_time_exponent=exponent(sides, [r['cpu_seconds'] for r in results]),
            memory_exponent=exponent(sides, [max(r['added_mb'], 1.0) for r in results])))
    for row in rows:
        row['threads'] = torch.get_num_threads()
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, 'small sizes only', tiny=True).parse_args(argv)
    if args.worker:
        kind, name, mode, size, *rest = args.worker
        if kind == 'memory':
            _memory_worker(name, mode, int(size), *rest)
        else:
            repeats, out = rest
            worker = _time_worker if kind == 'time' else _solo_worker
            worker(name, mode, int(size), int(repeats), out)
        return
    print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
