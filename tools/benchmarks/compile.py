"""torch.compile (inductor, default mode) against eager, inference forward (batch 1, no grad):
the SAM ViT-B image encoder at 1024x1024 (configs/backbones/vit-b_sam-encoder.py), UperNet
Swin-T at 512x512 (configs/upernet/upernet_swin-t_ade20k-512x512-160k.py, logits) and the
quickstart DINO (configs/quickstart/dino_vit-tiny_coco.py, raw predictions) at 128x128; quick:
the encoder at 512 and UperNet at 256.

Each model runs in its own fresh process with inductor's caches off (``compile_s`` is a cold
compile: Dynamo, AOTAutograd and C++ code generation, with the first compiled call). Eager and
compiled calls then alternate (``interleaved`` of tools/benchmarks/_common.py), one warm-up each,
and each time is the median of REPEATS (wall clock and process CPU time). ``speedup`` = eager_s /
compiled_s; ``max_abs_diff`` is between the compiled and eager outputs.

Run alone: ``python tools/benchmarks/compile.py [--quick]``.
"""
from __future__ import annotations

import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (REPO, argument_parser, fresh_process, interleaved,  # noqa: E402
                                print_rows, write_result)

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


def _worker(case: str, size: int, out: str) -> None:
    torch.manual_seed(0)
    model = _build(case, size)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model)
    with torch.no_grad():
        model(images)  # eager warm-up
        start, cpu_start = time.perf_counter(), time.process_time()
        compiled(images)  # compile + first call
        compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        compiled(images)  # compiled warm-up
        timings = interleaved({'eager': lambda: _flat(model(images)),
                               'compiled': lambda: _flat(compiled(images))}, REPEATS, warmup=0)
    diff = max((a - b).abs().max().item()
               for a, b in zip(timings['eager'].output, timings['compiled'].output))
    result = dict(compile_s=compile_s, compile_cpu_s=compile_cpu_s, max_abs_diff=diff)
    for name, timing in timings.items():
        result[f'{name}_s'] = timing.seconds
        result[f'{name}_cpu_s'] = timing.cpu_seconds
    write_result(out, result)


def run(quick: bool = False) -> list[dict]:
    rows = []
    for case, size in _sizes(quick).items():
        result = fresh_process([osp.abspath(__file__), '--worker', case, size],
                               env=dict(TORCHINDUCTOR_FORCE_DISABLE_CACHES='1'))
        rows.append(dict(case=f'{case} {size}x{size}', eager_s=result['eager_s'],
                         compiled_s=result['compiled_s'],
                         speedup=result['eager_s'] / result['compiled_s'],
                         eager_cpu_s=result['eager_cpu_s'],
                         compiled_cpu_s=result['compiled_cpu_s'],
                         compile_s=result['compile_s'], max_abs_diff=result['max_abs_diff'],
                         threads=torch.get_num_threads()))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, 'smaller inputs').parse_args(argv)
    if args.worker:
        case, size, out = args.worker
        _worker(case, int(size), out)
        return
    print_rows(run(quick=args.quick))


if __name__ == '__main__':
    main()
