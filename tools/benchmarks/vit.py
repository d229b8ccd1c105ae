"""SAM ViT-B image encoder forward (backbone + neck, batch 1, no grad) at 1024x1024 (quick: 512):
densevit's ``ImageEncoder`` (configs/backbones/vit-b_sam-encoder.py) against segment_anything's
``ImageEncoderViT`` and timm's ``samvit_base_patch16``, all on the same weights (a seeded random
SAM encoder, converted with ``convert_sam`` and timm's own ``checkpoint_filter_fn``).

Each implementation runs in its own subprocess: time is the median of 3 forwards (wall clock,
and process CPU time, which shared machines disturb less); peak memory is the subprocess's peak
resident size during the forwards (VmHWM reset after building: interpreter, torch and weights
resident plus what the forward allocates; ru_maxrss of the whole process off Linux), and
the output is compared with segment_anything's (``max_abs_diff``). ``ratio`` =
reference_s / ours_s (above 1: ours is faster).

Run alone: ``python tools/benchmarks/vit.py [--quick]``.
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
from functools import partial

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
IMPLS = ('ours', 'segment_anything', 'timm')
REPEATS = 3


def _sam_encoder(img_size: int) -> torch.nn.Module:
    """segment_anything's ViT-B image encoder as its vit_b builder sets it up."""
    from segment_anything.modeling import ImageEncoderViT
    return ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=768, depth=12,
                           num_heads=12, mlp_ratio=4.0, out_chans=256, qkv_bias=True,
                           norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                           window_size=14, global_attn_indexes=(2, 5, 8, 11))


def _build(impl: str, img_size: int, sam_state: dict) -> torch.nn.Module:
    if impl == 'ours':
        from mmengine.config import Config

        from densevit.checkpoint.loading import load_state_dict
        from densevit.checkpoint.vit import convert_sam
        from densevit.registry import MODELS
        cfg = Config.fromfile(osp.join(REPO, 'configs/backbones/vit-b_sam-encoder.py'))
        cfg.model.backbone.update(img_size=img_size, pretrain_img_size=img_size)
        model = MODELS.build(cfg.model)
        load_state_dict(model, convert_sam(sam_state), strict=True, log=False)
    elif impl == 'segment_anything':
        model = _sam_encoder(img_size)
        model.load_state_dict(sam_state)
    elif impl == 'timm':
        import timm
        from timm.models.vision_transformer_sam import checkpoint_filter_fn
        model = timm.create_model('samvit_base_patch16', pretrained=False, img_size=img_size,
                                  num_classes=0)
        missing, unexpected = model.load_state_dict(
            checkpoint_filter_fn({'image_encoder.' + k: v for k, v in sam_state.items()}, model),
            strict=False)
        if missing or unexpected:
            raise RuntimeError(f'timm samvit load: missing {missing}, unexpected {unexpected}')
    else:
        raise ValueError(f'unknown implementation {impl!r}; choose from {IMPLS}')
    return model.eval()


def _forward(impl: str, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    if impl == 'ours':
        return model(images)['s16']
    if impl == 'timm':
        return model.forward_features(images)
    return model(images)


def _peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (VmHWM) in MB; ``reset`` restarts the peak from the
    current resident size (Linux /proc/self/clear_refs), falling back to ru_maxrss elsewhere."""
    try:
        if reset:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(impl: str, img_size: int, weights: str, out: str) -> None:
    """Subprocess body: build, load, time REPEATS forwards, write times / memory / output."""
    sam_state = torch.load(weights, weights_only=True)
    model = _build(impl, img_size, sam_state)
    del sam_state
    gc.collect()
    images = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    _peak_rss_mb(reset=True)  # measure the forward, not the building and loading
    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(REPEATS):
            start, cpu_start = time.perf_counter(), time.process_time()
            output = _forward(impl, model, images)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak_mb = _peak_rss_mb()
    torch.save(output, out + '.pt')
    with open(out, 'w') as f:
        json.dump(dict(seconds=statistics.median(times), cpu_seconds=statistics.median(cpu_times),
                       peak_mb=peak_mb), f)


def _measure(impl: str, img_size: int, weights: str, tmp: str) -> tuple[dict, torch.Tensor]:
    out = osp.join(tmp, f'{impl}.json')
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    subprocess.run([sys.executable, osp.abspath(__file__), '--worker', impl, str(img_size),
                    weights, out], check=True, env=env)
    with open(out) as f:
        result = json.load(f)
    return result, torch.load(out + '.pt', weights_only=True)


def run(quick: bool = False) -> list[dict]:
    img_size = 512 if quick else 1024
    torch.manual_seed(0)
    sam = _sam_encoder(img_size)
    with torch.no_grad():  # SAM zero-inits the rel-pos tables; give them values that matter
        for name, p in sam.named_parameters():
            if 'rel_pos' in name:
                p.normal_(std=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'sam_vit_b_encoder.pt')
        torch.save(sam.state_dict(), weights)
        del sam
        results = {impl: _measure(impl, img_size, weights, tmp) for impl in IMPLS}
    ours, ours_out = results['ours']
    sam_out = results['segment_anything'][1]
    rows = []
    for reference in ('segment_anything', 'timm'):
        ref, ref_out = results[reference]
        rows.append(dict(
            case=f'SAM ViT-B encoder {img_size}x{img_size}', ours_s=ours['seconds'],
            reference=reference, reference_s=ref['seconds'],
            ratio=ref['seconds'] / ours['seconds'], ours_cpu_s=ours['cpu_seconds'],
            reference_cpu_s=ref['cpu_seconds'], ours_peak_mb=ours['peak_mb'],
            reference_peak_mb=ref['peak_mb'],
            ours_max_abs_diff_vs_sam=(ours_out - sam_out).abs().max().item(),
            reference_max_abs_diff_vs_sam=(ref_out - sam_out).abs().max().item(),
            threads=torch.get_num_threads()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='512x512 instead of 1024x1024')
    parser.add_argument('--worker', nargs=4, metavar=('IMPL', 'SIZE', 'WEIGHTS', 'OUT'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, size, weights, out = args.worker
        _worker(impl, int(size), weights, out)
        return
    for row in run(quick=args.quick):
        print(row)


if __name__ == '__main__':
    main()
