"""How backbone cost grows with image size: Swin-T, DiNAT-T and ViTDet-B (batch 1, 2 threads).

1. Swin-T against timm's ``swin_tiny_patch4_window7_224`` (built at each size with
   ``img_size``; its seeded weights go into densevit's Swin through the ``swin`` converter, as
   tests/test_swin.py does; sides of at least 224, below which timm shrinks its windows) at 512 and 1024 (quick: 256), forward (eval, no grad) and forward +
   backward (train, the mean of all output maps as the loss). DiNAT-T has no reference row:
   natten >= 0.21 dropped the relative position bias DiNAT uses, so natten's op cannot run the
   same network; ``densevit.ops.na2d`` against natten's op itself is the na2d topic.
2. Scaling exponents: forward time and the memory the forward allocates, fitted as
   ``log(y) = a + b log(pixels)`` over sides 256, 384, 512, 768, 1024 (quick: 128, 192, 256).
   b = 1 is linear in pixels (windowed and neighbourhood attention); ViTDet-B's four global
   blocks are quadratic in tokens, so its b grows towards 2 with size.

Each case runs in its own subprocess: time is the median of 3 repetitions after a warm-up (2 for
training at 1024); memory is the peak resident size, over the warm-up and the repetitions, above
the resident size after building (``added_mb``, what the case allocates) and the whole peak
(``peak_mb``).

Run alone: ``python tools/benchmarks/scaling.py [--quick]``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # for benchmarks.upernet
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


def _worker(name: str, mode: str, size: int, out: str) -> None:
    from benchmarks.upernet import peak_rss_mb
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
    gc.collect()
    # from before the warm-up: memory the allocator keeps after the first step would otherwise
    # hide what the step allocates
    resident = peak_rss_mb(reset=True)
    step()  # warm-up
    times, cpu_times = [], []
    for _ in range(2 if mode == 'train' and size >= 1024 else REPEATS):
        start, cpu_start = time.perf_counter(), time.process_time()
        maps = step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = peak_rss_mb()
    torch.save([m.contiguous() for m in maps], out + '.pt')
    with open(out, 'w') as f:
        json.dump(dict(seconds=statistics.median(times), cpu_seconds=statistics.median(cpu_times),
                       peak_mb=peak, added_mb=peak - resident), f)


def measure(name: str, mode: str, size: int, tmp: str) -> tuple[dict, list[torch.Tensor]]:
    out = osp.join(tmp, f'{name}_{mode}_{size}.json')
    tools = osp.dirname(osp.dirname(osp.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO, tools, os.environ.get('PYTHONPATH', '')]))
    subprocess.run([sys.executable, osp.abspath(__file__), '--worker', name, mode, str(size),
                    out], check=True, env=env)
    with open(out) as f:
        return json.load(f), torch.load(out + '.pt', weights_only=True)


def exponent(sizes: list[int], values: list[float]) -> float:
    """Slope b of the least-squares fit log(value) = a + b log(pixels)."""
    return float(np.polyfit(np.log(np.square(sizes)), np.log(values), 1)[0])


def run(quick: bool = False) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # 1. Swin-T against timm, same weights; DiNAT-T alone
        for size in ((256,) if quick else (512, 1024)):
            for mode in ('forward', 'train'):
                # outputs differ by densevit's output norms; parity is tests/test_swin.py's
                ours, ref = (measure('swin-t', mode, size, tmp)[0],
                             measure('timm-swin-t', mode, size, tmp)[0])
                rows.append(dict(case=f'Swin-T {size} {mode}', ours_s=ours['seconds'],
                                 reference='timm', reference_s=ref['seconds'],
                                 time_ratio=ours['seconds'] / ref['seconds'],
                                 ours_cpu_s=ours['cpu_seconds'],
                                 reference_cpu_s=ref['cpu_seconds'],
                                 ours_added_mb=ours['added_mb'],
                                 reference_added_mb=ref['added_mb'],
                                 memory_ratio=ours['added_mb'] / ref['added_mb'],
                                 ours_peak_mb=ours['peak_mb'], reference_peak_mb=ref['peak_mb']))
                dinat, _ = measure('dinat-t', mode, size, tmp)
                rows.append(dict(case=f'DiNAT-T {size} {mode}', ours_s=dinat['seconds'],
                                 reference='(natten cannot run DiNAT: no rpb)',
                                 ours_cpu_s=dinat['cpu_seconds'],
                                 ours_added_mb=dinat['added_mb'], ours_peak_mb=dinat['peak_mb']))
        # 2. exponents over image sides
        sides = [128, 192, 256] if quick else [256, 384, 512, 768, 1024]
        for name, label in (('swin-t', 'Swin-T'), ('dinat-t', 'DiNAT-T'),
                            ('vitdet-b', 'ViTDet-B')):
            results = [measure(name, 'forward', side, tmp)[0] for side in sides]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='small sizes only')
    parser.add_argument('--worker', nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, mode, size, out = args.worker
        _worker(name, mode, int(size), out)
        return
    for row in run(quick=args.quick):
        print(row)


if __name__ == '__main__':
    main()
