"""bfloat16 autocast (``--amp`` on CPU, ``CPUAutocastOptimWrapper``) against float32: one
training step (forward, loss, backward, AdamW step), batch 2, of UperNet Swin-T at 512x512
(configs/upernet/upernet_swin-t_ade20k-512x512-160k.py, random labels of its 150 classes, decode
and auxiliary losses) and of the SAM ViT-B image encoder at 512x512
(configs/backbones/vit-b_sam-encoder.py, a mean-square loss on its embedding); quick: 256x256.

Each model runs in its own fresh process; float32 and bfloat16 steps alternate after one warm-up
each (``interleaved`` of tools/benchmarks/_common.py), and the time is the median of REPEATS
(wall clock and process CPU time). ``speedup`` =
fp32_s / bf16_s, below 1 where bfloat16 is slower: a CPU without native bfloat16 matrix units
(AMX, AVX512-BF16) converts in software. The CPU's bf16 flags are in ``cpu_bf16``.

Run alone: ``python tools/benchmarks/amp.py [--quick]`` (``--tiny``: 64x64, one repetition, a
test of the harness).
"""
from __future__ import annotations

import contextlib
import os.path as osp
import sys
from functools import partial

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import (REPO, argument_parser, fresh_process, interleaved,  # noqa: E402
                                print_rows, write_result)

REPEATS = 3
BATCH = 2
CASES = ('upernet-swin-t', 'sam-vit-b-encoder')


def _cpu_bf16_flags() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            flags = next(line for line in f if line.startswith('flags')).split()
    except (OSError, StopIteration):
        return 'unknown'
    found = [flag for flag in ('avx512_bf16', 'amx_bf16') if flag in flags]
    return ' '.join(found) or 'none'


def _build(case: str, size: int):
    """The model in training mode and a ``loss()`` closure over a fixed batch."""
    import densevit.models  # noqa: F401  (registers modules)
    from densevit.apis import load_config
    from densevit.registry import MODELS
    from densevit.structures import DataSample, PixelData
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, size, size, generator=gen)
    if case == 'upernet-swin-t':
        cfg = load_config(osp.join(REPO, 'configs/upernet/upernet_swin-t_ade20k-512x512-160k.py'))
        cfg.model.backbone_checkpoint = None
        model = MODELS.build(cfg.model).train()
        samples = []
        for _ in range(BATCH):
            sample = DataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                              pad_shape=(size, size)))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, size, size),
                                                             generator=gen))
            samples.append(sample)

        def loss() -> torch.Tensor:
            return sum(model(images, samples, mode='loss').values())
    elif case == 'sam-vit-b-encoder':
        cfg = load_config(osp.join(REPO, 'configs/backbones/vit-b_sam-encoder.py')).model
        cfg.backbone.update(img_size=size, pretrain_img_size=size)
        model = MODELS.build(cfg).train()
        target = torch.randn(BATCH, 256, size // 16, size // 16, generator=gen)

        def loss() -> torch.Tensor:
            return (model(images)['s16'].float() - target).pow(2).mean()
    else:
        raise ValueError(f'unknown case {case!r}; choose from {CASES}')
    return model, loss


def _worker(case: str, size: int, repeats: int, out: str) -> None:
    torch.manual_seed(0)
    model, loss = _build(case, size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(bf16: bool) -> float:
        autocast = (torch.autocast('cpu', dtype=torch.bfloat16) if bf16
                    else contextlib.nullcontext())
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            value = loss()
        value.backward()
        optimizer.step()
        return value.item()

    timings = interleaved({'fp32': partial(step, False), 'bf16': partial(step, True)}, repeats)
    result = {}
    for name, timing in timings.items():
        result.update({f'{name}_s': timing.seconds, f'{name}_cpu_s': timing.cpu_seconds,
                       f'{name}_loss': timing.output})
    write_result(out, result)


def run(quick: bool = False, tiny: bool = False) -> list[dict]:
    size = 64 if tiny else 256 if quick else 512
    rows = []
    for case in CASES:
        result = fresh_process([osp.abspath(__file__), '--worker', case, size,
                                1 if tiny else REPEATS])
        rows.append(dict(case=f'{case} {size}x{size} batch {BATCH}, training step',
                         fp32_s=result['fp32_s'], bf16_s=result['bf16_s'],
                         speedup=result['fp32_s'] / result['bf16_s'],
                         fp32_cpu_s=result['fp32_cpu_s'], bf16_cpu_s=result['bf16_cpu_s'],
                         fp32_loss=result['fp32_loss'], bf16_loss=result['bf16_loss'],
                         cpu_bf16=_cpu_bf16_flags(), threads=torch.get_num_threads()))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, '256x256 instead of 512x512', tiny=True).parse_args(argv)
    if args.worker:
        case, size, repeats, out = args.worker
        _worker(case, int(size), int(repeats), out)
        return
    print_rows(run(quick=args.quick, tiny=args.tiny))


if __name__ == '__main__':
    main()
