"""UperNet Swin-T (150 classes, channels 512) at 512x512 (quick: 256x256): densevit's Segmentor
from configs/upernet/upernet_swin-t_ade20k-512x512-160k.py against transformers'
``UperNetForSemanticSegmentation`` (Swin-T backbone, auxiliary FCN head), on the same weights: a
seeded random transformers model (BatchNorm statistics randomised), converted for densevit with
the ``hf_upernet`` converter.

Cases: ``forward`` (eval, no grad, batch 1, logits at the input size) and ``train`` (train mode,
batch 2 with random labels, decode + 0.4 x auxiliary cross-entropy, backward). Both
implementations of a case are built in one worker process and timed interleaved on the same
input (tools/benchmarks/_common.py): the median of 3 repetitions of each after a warm-up, the
order rotating (wall clock and process CPU time); the outputs (forward: logits, train: losses)
are compared there. Peak memory comes from a fresh process per implementation running one step:
its peak resident size during the step (VmHWM reset after building: interpreter, torch and
weights resident plus what the step allocates; ``added_mb``: the peak above the resident size at
the reset, what the step itself allocates). The timing process also times a 4096x4096 fp32
``torch.mm`` before and after the case (this machine's matmul peak under the same load, the mean
of the two), and the rows give the achieved GFLOP/s (FLOPs: twice mmengine's ``FlopAnalyzer``
count of multiply-adds for one forward; a training step counted as 3 forwards) as a share of it.
``time_ratio`` = ours_s / reference_s and ``memory_ratio`` = ours_mb / reference_mb (below 1:
ours is faster / smaller; the target is <= 0.8).

Run alone: ``python tools/benchmarks/upernet.py [--quick] [--profile]`` (``--profile``: a
torch.profiler table of densevit's decode head instead; ``--tiny``: 64x64, a test of the
harness).
"""
from __future__ import annotations

import os.path as osp
import statistics
import sys
import tempfile
import time
from typing import Sequence

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (REPO, argument_parser, fresh_process, interleaved,  # noqa: E402
                                measure_peak, print_rows, write_result)

CONFIG = osp.join(REPO, 'configs/upernet/upernet_swin-t_ade20k-512x512-160k.py')
IMPLS = ('ours', 'transformers')
CASES = ('forward', 'train')
REPEATS = 3
NUM_CLASSES = 150
TRAIN_BATCH = 2  # BatchNorm in the pooled 1x1 branch needs more than one value per channel


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    """fp32 GFLOP/s of an n x n ``torch.mm`` (best of ``repeats`` after a warm-up): the machine's
    matmul peak under the current load and thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def reference_config():
    """transformers' UperNet Swin-T with ADE20K's 150 labels and the auxiliary head."""
    import transformers
    swin = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                   window_size=7, drop_path_rate=0.3,
                                   out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    return transformers.UperNetConfig(backbone_config=swin, num_labels=NUM_CLASSES,
                                      use_auxiliary_head=True)


def reference_weights(path: str) -> None:
    """Save a seeded random transformers UperNet Swin-T state dict, BatchNorm statistics and
    affine parameters randomised so that they matter."""
    import transformers
    torch.manual_seed(0)
    model = transformers.UperNetForSemanticSegmentation(reference_config())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    torch.save(model.state_dict(), path)


def build(impl: str, state: dict, **model_options) -> torch.nn.Module:
    """densevit's Segmentor (config CONFIG, ``model_options`` merged into ``model``) or
    transformers' model, loaded with ``state`` (a transformers state dict)."""
    if impl == 'ours':
        from mmengine.config import Config

        import densevit.models  # noqa: F401  (registers modules)
        from densevit.checkpoint import get_converter
        from densevit.checkpoint.loading import load_state_dict
        from densevit.registry import MODELS
        cfg = Config.fromfile(CONFIG)
        cfg.model.backbone_checkpoint = None
        cfg.model.update(model_options)
        model = MODELS.build(cfg.model)
        report = load_state_dict(model, get_converter('hf_upernet')(state), log=False)
        if not report.clean:
            raise RuntimeError(f'hf_upernet load into {CONFIG}: {report}')
        return model
    if impl == 'transformers':
        import transformers
        model = transformers.UperNetForSemanticSegmentation(reference_config())
        model.load_state_dict(state)
        return model
    raise ValueError(f'unknown implementation {impl!r}; choose from {IMPLS}')


def forward_logits(impl: str, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) at the input size."""
    if impl == 'ours':
        return model.encode_decode(images)
    return model(pixel_values=images).logits


def train_step(impl: str, model: torch.nn.Module, images: torch.Tensor,
               labels: torch.Tensor) -> float:
    """One forward + backward of the decode and auxiliary (weight 0.4) cross-entropies."""
    if impl == 'ours':
        from densevit.structures import DataSample, PixelData
        samples = []
        for label in labels:
            sample = DataSample(metainfo=dict(img_shape=tuple(label.shape),
                                              ori_shape=tuple(label.shape)))
            sample.gt_sem_seg = PixelData(data=label[None])
            samples.append(sample)
        loss, _ = model.parse_losses(model.loss(images, samples))
    else:
        loss = model(pixel_values=images, labels=labels).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def forward_flops(size: int) -> float:
    """FLOPs of one densevit forward at ``size`` (2 x mmengine FlopAnalyzer's multiply-adds)."""
    from mmengine.analysis import FlopAnalyzer

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model.encode_decode(images)

    from mmengine.config import Config

    import densevit.models  # noqa: F401
    from densevit.registry import MODELS
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone_checkpoint = None
    analyzer = FlopAnalyzer(Logits(MODELS.build(cfg.model).eval()),
                            (torch.randn(1, 3, size, size),))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return 2.0 * analyzer.total()


def reference_slide(model: torch.nn.Module, images: torch.Tensor, crop: int,
                    stride: int) -> torch.Tensor:
    """transformers' model run window by window over ``images`` (B, 3, H, W), with densevit's
    windows and stitching: logits (B, K, H, W) summed over the windows covering each pixel,
    divided by their number."""
    from densevit.models.tasks.segmentor import slide_windows
    b, _, h, w = images.shape
    logits = images.new_zeros((b, NUM_CLASSES, h, w))
    count = images.new_zeros((1, 1, h, w))
    for y1, y2, x1, x2 in slide_windows((h, w), (crop, crop), (stride, stride)):
        logits[..., y1:y2, x1:x2] += model(pixel_values=images[..., y1:y2, x1:x2]).logits
        count[..., y1:y2, x1:x2] += 1
    return logits / count


def _variant(name: str) -> tuple[str, int]:
    """'ours' or 'transformers', optionally with ':WINDOW_BATCH' (slide case) -> (impl, batch)."""
    impl, _, batch = name.partition(':')
    if impl not in IMPLS:
        raise ValueError(f'unknown implementation {name!r}; choose from {IMPLS} '
                         f'(with :WINDOW_BATCH for the slide case)')
    return impl, int(batch or 1)


def _case(name: str, case: str, size: int, state: dict, slide: Sequence[int]):
    """Build the variant ``name`` for ``case``; its step and its warm-up (the step itself,
    except in the slide case: one window, as a full image takes minutes on 2 cores). ``slide``
    (case 'slide'): image width, crop and stride; the image is ``size`` high."""
    impl, window_batch = _variant(name)
    g = torch.Generator().manual_seed(0)
    if case == 'slide':
        width, crop, stride = slide
        model = build(impl, state, test_cfg=dict(mode='slide', crop_size=(crop, crop),
                                                 stride=(stride, stride),
                                                 batch_size=window_batch)).eval()
        images = torch.randn(1, 3, size, width, generator=g)

        def step():
            with torch.no_grad():
                if impl == 'ours':
                    return model.slide_inference(images)
                return reference_slide(model, images, crop, stride)

        def warm_up():
            with torch.no_grad():
                forward_logits(impl, model, images[..., :crop, :crop])
        return step, warm_up
    model = build(impl, state)
    if case == 'forward':
        model.eval()
        images = torch.randn(1, 3, size, size, generator=g)

        def step():
            with torch.no_grad():
                return forward_logits(impl, model, images)
    elif case == 'train':
        model.train()
        images = torch.randn(TRAIN_BATCH, 3, size, size, generator=g)
        labels = torch.randint(0, NUM_CLASSES, (TRAIN_BATCH, size, size), generator=g)

        def step():
            return torch.tensor(train_step(impl, model, images, labels))
    else:
        raise ValueError(f"unknown case {case!r}; choose from {CASES + ('slide',)}")
    return step, step


def _time_worker(names: str, case: str, size: int, weights: str, repeats: int, matmul_n: int,
                 out: str, *slide: int) -> None:
    """Worker body: the comma-separated variants built here and timed interleaved after their
    warm-ups, between two ``matmul_n`` matmuls; each output compared with the last variant's
    (the reference)."""
    state = torch.load(weights, weights_only=True)
    cases = {name: _case(name, case, size, state, slide) for name in names.split(',')}
    del state
    for _, warm_up in cases.values():
        warm_up()
    gflops = [matmul_gflops(matmul_n)]
    timings = interleaved({name: step for name, (step, _) in cases.items()}, repeats, warmup=0)
    gflops.append(matmul_gflops(matmul_n))
    reference = list(timings.values())[-1].output
    result = {}
    for name, t in timings.items():
        result[name] = dict(seconds=t.seconds, cpu_seconds=t.cpu_seconds,
                            matmul_gflops=statistics.mean(gflops))
        if case == 'train':
            result[name]['loss'] = t.output.item()
        else:
            result[name]['max_rel_diff'] = ((t.output - reference).abs().max()
                                            / reference.abs().max()).item()
    write_result(out, result)


def _memory_worker(name: str, case: str, size: int, weights: str, out: str,
                   *slide: int) -> None:
    """Worker body: the memory of one step of the variant ``name``."""
    step, _ = _case(name, case, size, torch.load(weights, weights_only=True), slide)
    _, memory = measure_peak(step)
    write_result(out, dict(peak_mb=memory['peak_mb'], added_mb=memory['extra_mb']))


def measure(case: str, size: int, weights: str, names: Sequence[str],
            slide: Sequence[int] = (), repeats: int = REPEATS,
            matmul_n: int = 4096) -> dict[str, dict]:
    """Time the variants ``names`` (the reference last) interleaved in one fresh process, then
    each one's memory in a fresh process of its own. Returns name -> seconds, cpu_seconds,
    matmul_gflops, max_rel_diff (or loss, case 'train'), peak_mb and added_mb."""
    script = osp.abspath(__file__)
    times = fresh_process([script, '--worker', 'time', ','.join(names), case, size, weights,
                           repeats, matmul_n, *slide])
    return {name: dict(times[name], **fresh_process(
        [script, '--worker', 'memory', name, case, size, weights, *slide])) for name in names}


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    size = 64 if tiny else 256 if quick else 512
    flops = forward_flops(size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'upernet_swin_t.pt')
        reference_weights(weights)
        for case in CASES:
            results = measure(case, size, weights, IMPLS, repeats=1 if tiny else REPEATS,
                              matmul_n=512 if tiny else 4096)
            ours, ref = results['ours'], results['transformers']
            case_flops = flops * (1 if case == 'forward' else 3 * TRAIN_BATCH)
            row = dict(case=f'UperNet Swin-T {size}x{size} {case}'
                            + (' (no grad, batch 1)' if case == 'forward'
                               else f' + backward (batch {TRAIN_BATCH})'),
                       ours_s=ours['seconds'], reference_s=ref['seconds'],
                       time_ratio=ours['seconds'] / ref['seconds'],
                       ours_cpu_s=ours['cpu_seconds'], reference_cpu_s=ref['cpu_seconds'],
                       cpu_time_ratio=ours['cpu_seconds'] / ref['cpu_seconds'],
                       ours_peak_mb=ours['peak_mb'], reference_peak_mb=ref['peak_mb'],
                       memory_ratio=ours['peak_mb'] / ref['peak_mb'],
                       ours_added_mb=ours['added_mb'], reference_added_mb=ref['added_mb'],
                       added_memory_ratio=ours['added_mb'] / ref['added_mb'],
                       gflop=case_flops / 1e9,
                       ours_gflop_s=case_flops / ours['seconds'] / 1e9,
                       ours_share_of_matmul_peak=case_flops / ours['seconds'] / 1e9
                       / ours['matmul_gflops'],
                       reference_share_of_matmul_peak=case_flops / ref['seconds'] / 1e9
                       / ref['matmul_gflops'],
                       matmul_peak_gflop_s=statistics.mean(
                           [ours['matmul_gflops'], ref['matmul_gflops']]),
                       threads=torch.get_num_threads())
            if case == 'forward':
                row['max_rel_diff'] = ours['max_rel_diff']
            else:  # drop path draws differ between the two: losses agree only roughly
                row['loss_ours_vs_reference'] = f'{ours["loss"]:.3f} / {ref["loss"]:.3f}'
            rows.append(row)
    return rows


def profile_head(size: int) -> None:
    """Print a torch.profiler table of densevit's decode head at ``size`` (eval, no grad)."""
    from torch.profiler import profile
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'upernet_swin_t.pt')
        reference_weights(weights)
        model = build('ours', torch.load(weights, weights_only=True)).eval()
    with torch.no_grad():
        features = model.extract_feat(torch.randn(1, 3, size, size))
        model.decode_head(features)
        with profile(record_shapes=True) as prof:
            model.decode_head(features)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by='self_cpu_time_total',
                                                             row_limit=20))


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__, '256x256 instead of 512x512', tiny=True)
    parser.add_argument('--profile', action='store_true', help='profile the decode head only')
    args = parser.parse_args(argv)
    if args.worker:
        kind, name, case, size, weights, *rest, out = args.worker  # out: always last
        if kind == 'time':
            repeats, matmul_n, *slide = map(int, rest)
            _time_worker(name, case, int(size), weights, repeats, matmul_n, out, *slide)
        else:
            _memory_worker(name, case, int(size), weights, out, *map(int, rest))
    elif args.profile:
        profile_head(256 if args.quick else 512)
    else:
        print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
