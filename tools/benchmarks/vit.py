"""SAM ViT-B image encoder forward (backbone + neck, batch 1, no grad) at 1024x1024 (quick: 512):
densevit's ``ImageEncoder`` (configs/backbones/vit-b_sam-encoder.py) against segment_anything's
``ImageEncoderViT`` and timm's ``samvit_base_patch16``, all on the same weights (a seeded random
SAM encoder, converted with ``convert_sam`` and timm's own ``checkpoint_filter_fn``).

The three implementations are timed interleaved in one worker process (all built there, the
same input; tools/benchmarks/_common.py): the median of 3 forwards of each after one warm-up,
the order rotating (wall clock, and process CPU time, which shared machines disturb less); the
outputs are compared there with segment_anything's (``max_abs_diff``). Peak memory comes from a
fresh process per implementation running one forward: its peak resident size during that
forward (VmHWM reset after building: interpreter, torch and weights resident plus what the
forward allocates; ru_maxrss of the whole process off Linux). ``ratio`` = reference_s / ours_s
(above 1: ours is faster).

Run alone: ``python tools/benchmarks/vit.py [--quick]`` (``--tiny``: 64x64, a test of the harness).
"""
from __future__ import annotations

import os.path as osp
import sys
import tempfile
from functools import partial

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (REPO, argument_parser, fresh_process, interleaved,  # noqa: E402
                                measure_peak, print_rows, write_result)

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


def _images(img_size: int) -> torch.Tensor:
    return torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))


def _time_worker(img_size: int, weights: str, repeats: int, out: str) -> None:
    """Worker body: all implementations in this process, timed interleaved; their outputs'
    largest difference from segment_anything's."""
    sam_state = torch.load(weights, weights_only=True)
    models = {impl: _build(impl, img_size, sam_state) for impl in IMPLS}
    del sam_state
    images = _images(img_size)
    with torch.no_grad():
        timings = interleaved({impl: partial(_forward, impl, model, images)
                               for impl, model in models.items()}, repeats)
    sam_out = timings['segment_anything'].output
    write_result(out, {impl: dict(seconds=t.seconds, cpu_seconds=t.cpu_seconds,
                                  max_abs_diff_vs_sam=(t.output - sam_out).abs().max().item())
                       for impl, t in timings.items()})


def _memory_worker(impl: str, img_size: int, weights: str, out: str) -> None:
    """Worker body: build and load one implementation, then the memory of one forward."""
    sam_state = torch.load(weights, weights_only=True)
    model = _build(impl, img_size, sam_state)
    del sam_state
    images = _images(img_size)
    with torch.no_grad():
        _, memory = measure_peak(lambda: _forward(impl, model, images))
    write_result(out, memory)


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    img_size = 64 if tiny else 512 if quick else 1024
    repeats = 1 if tiny else REPEATS
    torch.manual_seed(0)
    sam = _sam_encoder(img_size)
    with torch.no_grad():  # SAM zero-inits the rel-pos tables; give them values that matter
        for name, p in sam.named_parameters():
            if 'rel_pos' in name:
                p.normal_(std=0.02)
    script = osp.abspath(__file__)
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'sam_vit_b_encoder.pt')
        torch.save(sam.state_dict(), weights)
        del sam
        times = fresh_process([script, '--worker', 'time', img_size, weights, repeats])
        memory = {impl: fresh_process([script, '--worker', 'memory', impl, img_size, weights])
                  for impl in IMPLS}
    ours = times['ours']
    rows = []
    for reference in ('segment_anything', 'timm'):
        ref = times[reference]
        rows.append(dict(
            case=f'SAM ViT-B encoder {img_size}x{img_size}', ours_s=ours['seconds'],
            reference=reference, reference_s=ref['seconds'],
            ratio=ref['seconds'] / ours['seconds'], ours_cpu_s=ours['cpu_seconds'],
            reference_cpu_s=ref['cpu_seconds'], ours_peak_mb=memory['ours']['peak_mb'],
            reference_peak_mb=memory[reference]['peak_mb'],
            ours_max_abs_diff_vs_sam=ours['max_abs_diff_vs_sam'],
            reference_max_abs_diff_vs_sam=ref['max_abs_diff_vs_sam'],
            threads=torch.get_num_threads()))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, '512x512 instead of 1024x1024', tiny=True).parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == 'time':
            img_size, weights, repeats, out = rest
            _time_worker(int(img_size), weights, int(repeats), out)
        else:
            impl, img_size, weights, out = rest
            _memory_worker(impl, int(img_size), weights, out)
        return
    print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
