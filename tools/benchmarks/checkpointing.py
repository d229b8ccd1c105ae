"""Activation checkpointing: peak training memory of the ViTDet-L backbone (ViT-L/16, 14x14
windows, global blocks 5, 11, 17, 23, relative position bias) at 512x512 and 1024x1024, batch 1,
one forward + backward, with and without ``with_cp`` (quick: 512x512 only). A case whose process
is killed (out of memory) is reported as such.

Each case runs in its own fresh process: peak memory is the process's peak resident size
(VmHWM) during the step, reset after building the model, so it is the activations and gradients
the step adds on top of the weights; time is the step's wall clock and process CPU time (one step
after a warm-up step at full size is too long on a small CPU, so the first step is timed; with
``with_cp`` every block runs its forward twice). The gradients of both cases are compared
(``max_abs_grad_diff``: checkpointing must not change them). ``memory_ratio`` = plain / with_cp.

Run alone: ``python tools/benchmarks/checkpointing.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if osp.join(REPO, 'tools') not in sys.path:
    sys.path.insert(0, osp.join(REPO, 'tools'))

from benchmarks.vit import _peak_rss_mb  # noqa: E402


def _vit_large(img_size: int, with_cp: bool) -> torch.nn.Module:
    import densevit.models  # noqa: F401  (registers modules)
    from densevit.registry import MODELS
    return MODELS.build(dict(type='ViT', arch='large', img_size=img_size,
                             pretrain_img_size=224, window_size=14, use_rel_pos=True,
                             drop_path_rate=0.0, with_cp=with_cp)).train()


def _worker(img_size: int, with_cp: bool, out: str) -> None:
    """Subprocess body: one forward + backward, writes time, peak memory and a gradient."""
    torch.manual_seed(0)
    model = _vit_large(img_size, with_cp)
    images = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    _peak_rss_mb(reset=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    features = model(images)['s16']
    (features * features).mean().backward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = _peak_rss_mb()
    # the gradients of the first and last blocks' attention projections, for the comparison
    grads = {name: p.grad for name, p in model.named_parameters()
             if name in ('blocks.0.attn.qkv.weight', f'blocks.{model.depth - 1}.attn.qkv.weight',
                         'patch_embed.proj.weight')}
    torch.save(grads, out + '.pt')
    with open(out, 'w') as f:
        json.dump(dict(seconds=seconds, cpu_seconds=cpu_seconds, peak_mb=peak_mb), f)


def _measure(img_size: int, with_cp: bool, tmp: str) -> tuple[dict, dict] | None:
    """The worker's results, or None when it was killed (out of memory on a shared machine)."""
    out = osp.join(tmp, f'cp{int(with_cp)}_{img_size}.json')
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    done = subprocess.run([sys.executable, osp.abspath(__file__), '--worker', str(img_size),
                           str(int(with_cp)), out], env=env)
    if done.returncode == -signal.SIGKILL:
        return None
    done.check_returncode()
    with open(out) as f:
        return json.load(f), torch.load(out + '.pt', weights_only=True)


def run(quick: bool = False) -> list[dict]:
    rows = []
    for img_size in (512,) if quick else (512, 1024):
        with tempfile.TemporaryDirectory() as tmp:
            plain = _measure(img_size, False, tmp)
            cp = _measure(img_size, True, tmp)
        row = dict(case=f'ViT-L (ViTDet) {img_size}x{img_size}, batch 1, forward + backward')
        for name, result in (('plain', plain), ('with_cp', cp)):
            if result is None:
                row[f'{name}_peak_mb'] = 'killed (out of memory)'
            else:
                row.update({f'{name}_peak_mb': result[0]['peak_mb'],
                            f'{name}_s': result[0]['seconds'],
                            f'{name}_cpu_s': result[0]['cpu_seconds']})
        if plain is not None and cp is not None:
            row['memory_ratio'] = plain[0]['peak_mb'] / cp[0]['peak_mb']
            row['max_abs_grad_diff'] = max((plain[1][k] - cp[1][k]).abs().max().item()
                                           for k in plain[1])
        row['threads'] = torch.get_num_threads()
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='512x512 only')
    parser.add_argument('--worker', nargs=3, metavar=('SIZE', 'WITH_CP', 'OUT'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        size, with_cp, out = args.worker
        _worker(int(size), bool(int(with_cp)), out)
        return
    for row in run(quick=args.quick):
        print(row)


if __name__ == '__main__':
    main()
