"""torch.compile (inductor, default mode) against eager, inference forward (batch 1, no grad):
the SAM ViT-B image encoder at 1024x1024 (configs/backbones/vit-b_sam-encoder.py), UperNet
Swin-T at 512x512 (configs/upernet/upernet_swin-t_ade20k-512x512-160k.py, logits) and the
quickstart DINO (configs/quickstart/dino_vit-tiny_coco.py, raw predictions) at 128x128; quick:
the encoder at 512 and UperNet at 256.

Each model runs in its own fresh process with inductor's caches off (``compile_s`` is a cold
compile: Dynamo, AOTAutograd and C++ code generation, with the first compiled call). Eager and
compiled calls then alternate, one warm-up each, and each time is the median of REPEATS (wall
clock and process CPU time). ``speedup`` = eager_s / compiled_s; ``max_abs_diff`` is between
the compiled and eager outputs.

Run alone: ``python tools/benchmarks/compile.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
REPEATS = 3
CASES = ('vit-b-sam-encoder', 'upernet-swin-t', 'dino-quickstart')


def _sizes(quick: bool) -> dict[str, int]:
    return {'vit-b-sam-encoder': 512 if quick else 1024, 'upernet-swin-t': 256 if quick else 512,
            'dino-quickstart': 128}


def _build(case: str, size: int) -> torch.nn.Module:
    import densevit.models  # noqa: F401  (registers modules)
    from densevit.apis import load_config
    from densevit.registry import MODELS
    if case == 'vit-b-sam-encoder':
        cfg = load_config(osp.join(REPO, 'configs/backbones/vit-b_sam-encoder.py')).model
        cfg.backbone.update(img_size=size, pretrain_img_size=size)
    elif case == 'upernet-swin-t':
        cfg = load_config(osp.join(REPO, 'configs/upernet/upernet_swin-t_ade20k-512x512-160k.py'))
        cfg = cfg.model
        cfg.backbone_checkpoint = None
    elif case == 'dino-quickstart':
        cfg = load_config(osp.join(REPO, 'configs/quickstart/dino_vit-tiny_coco.py')).model
    else:
        raise ValueError(f'unknown case {case!r}; choose from {CASES}')
    return MODELS.build(cfg).eval()


def _flat(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _flat(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat(item)]
    return []


def _timed(fn, images) -> tuple[float, float, list[torch.Tensor]]:
    start, cpu_start = time.perf_counter(), time.process_time()
    out = _flat(fn(images))
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def _worker(case: str, size: int, out: str) -> None:
    torch.manual_seed(0)
    model = _build(case, size)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model)
    times = {'eager': [], 'compiled': []}
    with torch.no_grad():
        _timed(model, images)  # eager warm-up
        compile_s, compile_cpu_s, _ = _timed(compiled, images)  # compile + first call
        _timed(compiled, images)  # compiled warm-up
        for _ in range(REPEATS):
            for name, fn in (('eager', model), ('compiled', compiled)):
                seconds, cpu_seconds, outputs = _timed(fn, images)
                times[name].append((seconds, cpu_seconds, outputs))
    eager_out, compiled_out = times['eager'][-1][2], times['compiled'][-1][2]
    diff = max((a - b).abs().max().item() for a, b in zip(eager_out, compiled_out))
    result = dict(compile_s=compile_s, compile_cpu_s=compile_cpu_s, max_abs_diff=diff)
    for name, runs in times.items():
        result[f'{name}_s'] = statistics.median(r[0] for r in runs)
        result[f'{name}_cpu_s'] = statistics.median(r[1] for r in runs)
    with open(out, 'w') as f:
        json.dump(result, f)


def run(quick: bool = False) -> list[dict]:
    rows = []
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
               TORCHINDUCTOR_FORCE_DISABLE_CACHES='1')
    with tempfile.TemporaryDirectory() as tmp:
        for case, size in _sizes(quick).items():
            out = osp.join(tmp, f'{case}.json')
            subprocess.run([sys.executable, osp.abspath(__file__), '--worker', case, str(size),
                            out], check=True, env=env)
            with open(out) as f:
                result = json.load(f)
            rows.append(dict(case=f'{case} {size}x{size}', eager_s=result['eager_s'],
                             compiled_s=result['compiled_s'],
                             speedup=result['eager_s'] / result['compiled_s'],
                             eager_cpu_s=result['eager_cpu_s'],
                             compiled_cpu_s=result['compiled_cpu_s'],
                             compile_s=result['compile_s'], max_abs_diff=result['max_abs_diff'],
                             threads=torch.get_num_threads()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='smaller inputs')
    parser.add_argument('--worker', nargs=3, metavar=('CASE', 'SIZE', 'OUT'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, size, out = args.worker
        _worker(case, int(size), out)
        return
    for row in run(quick=args.quick):
        print(row)


if __name__ == '__main__':
    main()
