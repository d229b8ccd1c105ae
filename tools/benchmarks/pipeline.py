"""Data pipeline throughput against the model's training step, on the synthetic stand-in sets in
data/synthetic (written there if missing; ``data_root`` switched to them).

Pipelines: the ADE20K quickstart (configs/quickstart/upernet_resnet18_ade20k.py: 128 crops,
batch 8), the full ADE20K recipe (configs/upernet/upernet_swin-t_ade20k-512x512-160k.py: 512
crops, batch 2), the COCO LSJ recipe (configs/dino/dino-mask_r50_coco-lsj-1024-50e.py: 1024
large-scale jitter, batch 2) and the DINO quickstart (configs/quickstart/dino_vit-tiny_coco.py).
Each config's train dataloader, as the config builds it, runs with 0 and 2 workers: images per
second over a fixed number of batches after the first and after the ones the workers prefetched
meanwhile (workers started and warmed). For the two
quickstarts, the model's training step (preprocessor, losses, backward, optimizer step; 2
threads, the dataloader's batches prefetched) gives the images per second the model consumes;
the pipeline is the bottleneck where it delivers fewer. On 2 cores the workers share the cores
with the training step, so 2 workers only help while the step waits.

Run alone: ``python tools/benchmarks/pipeline.py [--quick]``.
"""
from __future__ import annotations

import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks._common import argument_parser, interleaved, print_rows  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SYNTHETIC = osp.join(REPO, 'data/synthetic')
CONFIGS = {  # name -> (config, stand-in data root, train the model too)
    'ADE20K quickstart (128 crops)': ('configs/quickstart/upernet_resnet18_ade20k.py',
                                      'ade20k/ADEChallengeData2016/', True),
    'ADE20K full recipe (512 crops)': ('configs/upernet/upernet_swin-t_ade20k-512x512-160k.py',
                                       'ade20k/ADEChallengeData2016/', False),
    'COCO LSJ 1024 (DINO mask recipe)': ('configs/dino/dino-mask_r50_coco-lsj-1024-50e.py',
                                         'coco/', False),
    'COCO DINO quickstart': ('configs/quickstart/dino_vit-tiny_coco.py', 'coco/', True),
}


def ensure_stand_in() -> None:
    """Write the synthetic ADE20K and COCO stand-ins under data/synthetic if missing."""
    from densevit.datasets.synthetic import make_ade20k, make_coco
    if not osp.isdir(osp.join(SYNTHETIC, 'ade20k/ADEChallengeData2016/images')):
        make_ade20k(osp.join(SYNTHETIC, 'ade20k'), seed=0)
    if not osp.isdir(osp.join(SYNTHETIC, 'coco/train2017')):
        make_coco(osp.join(SYNTHETIC, 'coco'), seed=0)


def load(config: str, data_root: str, workers: int):
    """The config on the stand-in data and its train dataloader config with ``workers``."""
    from mmengine.registry import init_default_scope

    import densevit.datasets  # noqa: F401  (registers datasets and transforms)
    from densevit.apis import load_config
    cfg = load_config(osp.join(REPO, config), {'data_root': osp.join(SYNTHETIC, data_root)})
    init_default_scope(cfg.get('default_scope', 'densevit'))
    loader = dict(cfg.train_dataloader)
    loader.update(num_workers=workers, persistent_workers=workers > 0)
    return cfg, loader


def pipeline_images_per_s(config: str, data_root: str, workers: int, batches: int) -> float:
    """Images per second of the config's train dataloader over ``batches`` after the first and
    after those the workers prefetch (2 each) while it loads."""
    from mmengine.runner import Runner
    _, loader_cfg = load(config, data_root, workers)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    it = iter(loader)
    for _ in range(1 + 2 * workers):  # workers started and their prefetched batches taken
        next(it)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        images += len(batch['inputs'])
    seconds = time.perf_counter() - start
    del it, loader
    return images / seconds


def step_images_per_s(config: str, data_root: str, steps: int) -> tuple[float, int]:
    """Images per second of the model's training step on prefetched batches of the config;
    also the batch size."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    import densevit.models  # noqa: F401  (registers modules)
    from densevit.registry import MODELS
    cfg, loader_cfg = load(config, data_root, 0)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(steps + 1)]
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    feed = iter(batches)  # the first batch warms up, the others are timed
    timing = interleaved({'step': lambda: model.train_step(next(feed), optim)}, steps)['step']
    return len(batches[0]['inputs']) / timing.seconds, len(batches[0]['inputs'])


def run(quick: bool = False) -> list[dict]:
    ensure_stand_in()
    batches, steps = (4, 3) if quick else (12, 6)
    rows = []
    for name, (config, data_root, train) in CONFIGS.items():
        row = dict(pipeline=name, config=config)
        for workers in (0, 2):
            row[f'images_per_s_{workers}_workers'] = pipeline_images_per_s(
                config, data_root, workers, batches)
        if train:
            row['model_step_images_per_s'], row['batch'] = step_images_per_s(
                config, data_root, steps)
            fastest = max(row['images_per_s_0_workers'], row['images_per_s_2_workers'])
            row['bottleneck'] = ('pipeline' if fastest < row['model_step_images_per_s']
                                 else 'model step')
        row['threads'] = torch.get_num_threads()
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = argument_parser(__doc__, 'fewer batches and steps', worker=False).parse_args(argv)
    print_rows(run(quick=args.quick))


if __name__ == '__main__':
    main()
