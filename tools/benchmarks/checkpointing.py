"""Activation checkpointing: peak training memory of the ViTDet-L backbone (ViT-L/16, 14x14
windows, global blocks 5, 11, 17, 23, relative position bias) at 512x512 and 1024x1024, batch 1,
one forward + backward, with and without ``with_cp`` (quick: 512x512 only). A case whose process
is killed (out of memory) is reported as such.

Each case runs in its own fresh process (tools/benchmarks/_common.py): peak memory is the process's
peak resident size (VmHWM) during the step, reset after building the model, so it is the
activations and gradients the step adds on top of the weights; time is the step's wall clock and
process CPU time (one step after a warm-up step at full size is too long on a small CPU, so the
first step is timed; with ``with_cp`` every block runs its forward twice). The gradients of both
cases are compared (``max_abs_grad_diff``: checkpointing must not change them). ``memory_ratio`` =
plain / with_cp.

Run alone: ``python tools/benchmarks/checkpointing.py [--quick]`` (``--tiny``: 64x64, a test of
the harness).
"""
from __future__ import annotations

import os.path as osp
import signal
import subprocess
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (argument_parser, fresh_process, measure_peak,  # noqa: E402
                                print_rows, write_result)


def _vit_large(img_size: int, with_cp: bool) -> torch.nn.Module:
    import densevit.models  # noqa: F401  (registers modules)
    from densevit.registry import MODELS
    return MODELS.build(dict(type='ViT', arch='large', img_size=img_size,
                             pretrain_img_size=224, window_size=14, use_rel_pos=True,
                             drop_path_rate=0.0, with_cp=with_cp)).train()


def _worker(img_size: int, with_cp: bool, out: str) -> None:
    """Worker body: one forward + backward, writes time, peak memory and a gradient."""
    torch.manual_seed(0)
    model = _vit_large(img_size, with_cp)
    images = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    times = {}

    def step():
        start, cpu_start = time.perf_counter(), time.process_time()
        features = model(images)['s16']
        (features * features).mean().backward()
        times.update(seconds=time.perf_counter() - start,
                     cpu_seconds=time.process_time() - cpu_start)

    _, memory = measure_peak(step)
    # the gradients of the first and last blocks' attention projections, for the comparison
    grads = {name: p.grad for name, p in model.named_parameters()
             if name in ('blocks.0.attn.qkv.weight', f'blocks.{model.depth - 1}.attn.qkv.weight',
                         'patch_embed.proj.weight')}
    write_result(out, dict(times, peak_mb=memory['peak_mb']), dict(grads=grads))


def _measure(img_size: int, with_cp: bool) -> dict | None:
    """The worker's results, or None when it was killed (out of memory on a shared machine)."""
    try:
        return fresh_process([osp.abspath(__file__), '--worker', img_size, int(with_cp)])
    except subprocess.CalledProcessError as error:
        if error.returncode == -signal.SIGKILL:
            return None
        raise


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    rows = []
    for img_size in (64,) if tiny else (512,) if quick else (512, 1024):
        plain = _measure(img_size, False)
        cp = _measure(img_size, True)
        row = dict(case=f'ViT-L (ViTDet) {img_size}x{img_size}, batch 1, forward + backward')
        for name, result in (('plain', plain), ('with_cp', cp)):
            if result is None:
                row[f'{name}_peak_mb'] = 'killed (out of memory)'
            else:
                row.update({f'{name}_peak_mb': result['peak_mb'], f'{name}_s': result['seconds'],
                            f'{name}_cpu_s': result['cpu_seconds']})
        if plain is not None and cp is not None:
            row['memory_ratio'] = plain['peak_mb'] / cp['peak_mb']
            row['max_abs_grad_diff'] = max(
                (plain['grads'][k] - cp['grads'][k]).abs().max().item() for k in plain['grads'])
        row['threads'] = torch.get_num_threads()
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, '512x512 only', tiny=True).parse_args(argv)
    if args.worker:
        size, with_cp, out = args.worker
        _worker(int(size), bool(int(with_cp)), out)
        return
    print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
