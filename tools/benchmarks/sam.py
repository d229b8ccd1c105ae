"""SAM ViT-B at 1024x1024: densevit's ``SamPredictor`` and ``SamAutomaticMaskGenerator`` against
segment-anything's, on the same weights (a seeded random vit_b converted with the ``sam``
converter), float32, no grad, torch's default threads. The weights' zero-initialised tables are
drawn, and the mask decoder's upscaling kernels made uniform over their 2 x 2 taps: with raw
random kernels every mask is a 4 x 4 texture of ~90,000 runs whose RLEs, held by both generators,
would set the memory; made uniform, masks follow the picture's regions in ~5,000 runs, nearer a
trained model's smooth masks.

Rows (``ratio`` = segment-anything's time / ours: above 1, ours is faster):
1. ``set_image``: the image embedding of a 1024x1024 picture (densevit's ViT + SamNeck against
   ``ImageEncoderViT``).
2. ``predict`` with one point (three masks at the image's size): the per-prompt decode.
3. ``predict_torch`` with 64 boxes (one mask each): the batched decode.
4. ``generate``: automatic mask generation, a 32 x 32 grid (quick: 8 x 8), 64 points per batch,
   on a 1024x1024 picture and (full runs) on a 2048x1536 one, about the size of SA-1B's photos:
   segment-anything upsamples all 192 masks of a batch to the picture's size, ours 16 at a time.
   Random weights predict IoUs in about [-0.1, 0.2] and logits within +-0.3, so the default
   thresholds (0.88; 0.95 at offset 1) would keep no mask and spare ours all upsampling; the row
   uses pred_iou_thresh 0.05, stability_score_thresh 0.6 at offset 0.01, which keep about a
   third of the masks after the IoU filter and half of those after the stability filter.

Rows 1-3 run in one subprocess holding both predictors: every repetition times both, the order
alternating, after one warm-up repetition (``interleaved`` of tools/benchmarks/_common.py); times
are medians (wall clock, and process CPU time, which a shared machine disturbs less);
``max_abs_diff`` compares the embeddings or logits. Row 4 runs each generator in a fresh subprocess
per round, the rounds alternating implementations: a warm-up (``set_image`` and one prompt), then
the peak resident size is reset (VmHWM, through tools/benchmarks/_common.py) and one ``generate``
is timed. ``peak_mb`` is the process's peak during ``generate``, ``extra_mb`` that peak minus the
resident size before it (weights, torch and the warm-up's leftovers); time and memory are medians
over the rounds, ``mem_ratio`` = segment-anything's extra_mb / ours (above 1: ours needs less).
``embed_extra_mb`` is the warm-up ``set_image``'s own extra peak: where it comes near ``extra_mb``,
the image encoder, not the mask generation, sets the peak.

Run alone: ``python tools/benchmarks/sam.py [--quick]`` (``--tiny``: rows 1-3 only, one
repetition without warm-up, 4 boxes, a test of the harness).
"""
from __future__ import annotations

import os.path as osp
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (REPO, argument_parser, fresh_process, interleaved,  # noqa: E402
                                measure_peak, print_rows, write_result)

CONFIG = osp.join(REPO, 'configs/sam/sam_vit-b.py')
IMPLS = ('ours', 'segment_anything')
IMAGE_SIZE = 1024
BOXES = dict(full=64, quick=64, tiny=4)
# generate rows: (height, width); SA-1B's photos are about 1500 x 2250
AMG_IMAGES = ((1024, 1024), (1536, 2048))
AMG = dict(points_per_batch=64, pred_iou_thresh=0.05, stability_score_thresh=0.6,
           stability_score_offset=0.01)
# (repetitions of set_image, predict, predict_torch; generate rounds per implementation)
REPEATS = dict(full=(5, 20, 5, 3), quick=(2, 5, 2, 1), tiny=(1, 1, 1, 1))


def _image(height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> np.ndarray:
    """A picture: four coloured discs on a gradient, a little noise."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([xx * 120, yy * 120, (xx + yy) * 60], -1)
    for cx, cy, r, colour in [(0.25, 0.25, 0.15, (250, 30, 30)), (0.7, 0.3, 0.2, (30, 250, 30)),
                              (0.3, 0.72, 0.2, (30, 30, 250)), (0.75, 0.75, 0.12, (250, 250, 30))]:
        image[(xx - cx * width / max(height, width)) ** 2
              + (yy - cy * height / max(height, width)) ** 2 < r ** 2] = colour
    noise = np.random.default_rng(0).integers(0, 12, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _write_weights(path: str) -> None:
    """segment-anything's vit_b, seeded, with its zero-initialised tables drawn and its mask
    upscaling kernels made uniform over their 2 x 2 taps (see the module docstring)."""
    from segment_anything import sam_model_registry
    torch.manual_seed(0)
    sam = sam_model_registry['vit_b']()
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if 'rel_pos' in name or 'no_mask_embed' in name:
                p.normal_(0, 0.02)
        for layer in sam.mask_decoder.output_upscaling:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.copy_(layer.weight.mean((2, 3), keepdim=True).expand_as(layer.weight))
    torch.save(sam.state_dict(), path)


def _model(impl: str, weights: str) -> torch.nn.Module:
    state = torch.load(weights, weights_only=True)
    if impl == 'ours':
        from densevit.apis import init_model
        from densevit.checkpoint import get_converter, load_state_dict
        model = init_model(CONFIG)
        load_state_dict(model, get_converter('sam')(state), strict=True, log=False)
    elif impl == 'segment_anything':
        from segment_anything import sam_model_registry
        model = sam_model_registry['vit_b']()
        model.load_state_dict(state)
    else:
        raise ValueError(f'unknown implementation {impl!r}; choose from {IMPLS}')
    return model.eval()


def _predictor(impl: str, model: torch.nn.Module):
    if impl == 'ours':
        from densevit.apis import SamPredictor
    else:
        from segment_anything import SamPredictor
    return SamPredictor(model)


def _generator(impl: str, model: torch.nn.Module, points_per_side: int):
    if impl == 'ours':
        from densevit.apis import SamAutomaticMaskGenerator
    else:
        from segment_anything import SamAutomaticMaskGenerator
    return SamAutomaticMaskGenerator(model, points_per_side=points_per_side, **AMG)


def _prompts_worker(weights: str, size: str, out: str) -> None:
    """Subprocess body of rows 1-3: both predictors in one process, timed interleaved (no
    warm-up at size 'tiny')."""
    embed_repeats, point_repeats, box_repeats, _ = REPEATS[size]
    num_boxes = BOXES[size]
    warmup = 0 if size == 'tiny' else 1
    predictors = {impl: _predictor(impl, _model(impl, weights)) for impl in IMPLS}
    image = _image()
    rows = {}
    with torch.no_grad():
        rows['set_image'] = interleaved(
            {impl: (lambda p=p: (p.set_image(image), p.get_image_embedding())[1])
             for impl, p in predictors.items()},
            embed_repeats, warmup)
        point = dict(point_coords=np.array([[500.0, 400.0]]), point_labels=np.array([1]))
        rows['predict'] = interleaved(
            {impl: (lambda p=p: p.predict(**point, multimask_output=True)[2])
             for impl, p in predictors.items()}, point_repeats, warmup)
        gen = torch.Generator().manual_seed(0)
        corners = torch.rand(num_boxes, 2, 2, generator=gen) * IMAGE_SIZE
        # two random corners -> (x1, y1, x2, y2)
        boxes = torch.cat([corners.amin(1), corners.amax(1)], 1)

        def boxes_fn(p):
            return p.predict_torch(None, None, p.transform.apply_boxes_torch(
                boxes, p.original_size), multimask_output=False)[2]

        rows['predict_torch'] = interleaved(
            {impl: (lambda p=p: boxes_fn(p)) for impl, p in predictors.items()}, box_repeats,
            warmup)
    result = {}
    for case, timings in rows.items():
        ours, ref = timings['ours'], timings['segment_anything']
        diff = float(np.abs(np.asarray(ours.output) - np.asarray(ref.output)).max())
        result[case] = dict(ours_s=ours.seconds, reference_s=ref.seconds,
                            ours_cpu_s=ours.cpu_seconds, reference_cpu_s=ref.cpu_seconds,
                            max_abs_diff=diff)
    write_result(out, result)


def _amg_worker(impl: str, weights: str, points_per_side: int, height: int, width: int,
                out: str) -> None:
    """Subprocess body of the generate rows: warm up (measuring the embedding's own peak),
    reset the peak, time one ``generate``."""
    model = _model(impl, weights)
    generator = _generator(impl, model, points_per_side)
    image = _image(height, width)
    with torch.no_grad():  # warm-up: the encoder and the decoder once
        _, embed_memory = measure_peak(lambda: generator.predictor.set_image(image))
        generator.predictor.predict(point_coords=np.array([[500.0, 400.0]]),
                                    point_labels=np.array([1]))
        generator.predictor.reset_image()
    times = {}

    def timed_generate() -> list[dict]:
        start, cpu_start = time.perf_counter(), time.process_time()
        records = generator.generate(image)
        times.update(seconds=time.perf_counter() - start,
                     cpu_seconds=time.process_time() - cpu_start)
        return records

    records, memory = measure_peak(timed_generate)
    write_result(out, dict(times, peak_mb=memory['peak_mb'], extra_mb=memory['extra_mb'],
                           embed_extra_mb=embed_memory['extra_mb'], masks=len(records),
                           areas=sorted(r['area'] for r in records)))


def _subprocess(*args) -> dict:
    return fresh_process([osp.abspath(__file__), '--worker', *args])


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    size = 'tiny' if tiny else 'quick' if quick else 'full'
    points_per_side = 8 if quick else 32
    rounds = REPEATS[size][3]
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'sam_vit_b.pt')
        _write_weights(weights)
        prompts = _subprocess('prompts', weights, size)
        names = dict(set_image=f'set_image (image embedding), {IMAGE_SIZE}x{IMAGE_SIZE}',
                     predict='predict, one point, 3 masks',
                     predict_torch=f'predict_torch, {BOXES[size]} boxes, 1 mask each')
        for case, result in prompts.items():
            rows.append(dict(case=f'SAM ViT-B {names[case]}', ours_s=result['ours_s'],
                             reference='segment_anything', reference_s=result['reference_s'],
                             ratio=result['reference_s'] / result['ours_s'],
                             ours_cpu_s=result['ours_cpu_s'],
                             reference_cpu_s=result['reference_cpu_s'],
                             max_abs_diff=result['max_abs_diff'], threads=threads))
        for height, width in () if tiny else AMG_IMAGES[:1] if quick else AMG_IMAGES:
            rows.append(_amg_row(weights, points_per_side, height, width, rounds))
    return rows


def _amg_row(weights: str, points_per_side: int, height: int, width: int, rounds: int) -> dict:
    """Both generators in fresh subprocesses, ``rounds`` times, alternating; medians."""
    amg = {impl: [] for impl in IMPLS}
    for i in range(rounds):
        for impl in (IMPLS if i % 2 == 0 else IMPLS[::-1]):
            amg[impl].append(_subprocess('amg', impl, weights, points_per_side, height, width))
    summary = {impl: {key: statistics.median(r[key] for r in results)
                      for key in ('seconds', 'cpu_seconds', 'peak_mb', 'extra_mb',
                                  'embed_extra_mb')}
               for impl, results in amg.items()}
    ours, ref = summary['ours'], summary['segment_anything']
    ours_areas, ref_areas = amg['ours'][0]['areas'], amg['segment_anything'][0]['areas']
    area_diff = (max((abs(a - b) for a, b in zip(ours_areas, ref_areas)), default=0)
                 if len(ours_areas) == len(ref_areas) else None)
    return dict(
        case=f'SAM ViT-B generate, {points_per_side}x{points_per_side} grid, {width}x{height}',
        ours_s=ours['seconds'], reference='segment_anything', reference_s=ref['seconds'],
        ratio=ref['seconds'] / ours['seconds'], ours_cpu_s=ours['cpu_seconds'],
        reference_cpu_s=ref['cpu_seconds'], ours_peak_mb=ours['peak_mb'],
        reference_peak_mb=ref['peak_mb'], ours_extra_mb=ours['extra_mb'],
        reference_extra_mb=ref['extra_mb'],
        mem_ratio=ref['extra_mb'] / max(ours['extra_mb'], 1e-3),
        ours_embed_extra_mb=ours['embed_extra_mb'],
        reference_embed_extra_mb=ref['embed_extra_mb'], ours_masks=len(ours_areas),
        reference_masks=len(ref_areas), max_area_diff_px=area_diff, rounds=rounds,
        threads=torch.get_num_threads())


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, 'an 8x8 grid, fewer repetitions, one round',
                           tiny=True).parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == 'prompts':
            weights, size, out = rest
            _prompts_worker(weights, size, out)
        else:
            impl, weights, points_per_side, height, width, out = rest
            _amg_worker(impl, weights, int(points_per_side), int(height), int(width), out)
        return
    print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
