"""``densevit browse CONFIG [--split train|val] [-n N] [--seed S] --out DIR``: pictures of what
the model is fed.

Each picture shows one dataset sample twice, with its annotations drawn (boxes and masks, or the
label map with a legend of its classes): on the left as the file holds it (only the loading steps
of the pipeline run), on the right after the whole pipeline (resize, crop, flip, jitter, ...).
The pipeline hands the model raw 0..255 pixels (the data preprocessor normalises later, inside
the model), so the right panel is drawn from them as they are; a pipeline that normalised would
be undone with its own mean and std. N samples are drawn at random (``--seed``), and the random
transforms are seeded too, so a command gives the same pictures each time.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import random
from typing import Any

import numpy as np
from mmengine.config import DictAction

from . import CLIError

SPLITS = ('train', 'val', 'test')


def build_dataset(cfg, split: str, config: str):
    """The dataset of ``cfg``'s ``{split}_dataloader``; a CLIError when the config has none."""
    loader = cfg.get(f'{split}_dataloader')
    if not loader or not loader.get('dataset'):
        have = [s for s in SPLITS if (cfg.get(f'{s}_dataloader') or {}).get('dataset')]
        raise CLIError(f'{config} has no {split}_dataloader dataset'
                       + (f'; it has {", ".join(have)}' if have else ''))
    import densevit.datasets  # noqa: F401  (registers datasets and transforms)
    from densevit.registry import DATASETS
    return DATASETS.build(copy.deepcopy(loader['dataset']))


def _loading_pipeline(dataset):
    """The dataset's own loading and packing steps: its samples as the files hold them."""
    from mmengine.dataset import Compose

    from densevit.datasets.transforms import LoadAnnotations, LoadImageFromFile, _Pack
    steps = [t for t in dataset.pipeline.transforms
             if isinstance(t, (LoadImageFromFile, LoadAnnotations, _Pack))]
    return Compose(steps)


def to_image(inputs, pipeline=None, bgr: bool = False) -> np.ndarray:
    """A packed (3, H, W) image tensor as RGB uint8 (H, W, 3): uint8 as it is; a float image
    un-normalised with the mean and std of the pipeline step that has them, or taken as 0..1
    (or 0..255) pixels when no step does."""
    image = inputs.detach().cpu().numpy().transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        norm = next((t for t in (pipeline or []) if hasattr(t, 'mean') and hasattr(t, 'std')),
                    None)
        if norm is not None:
            image = image * np.asarray(norm.std, np.float32) + np.asarray(norm.mean, np.float32)
        elif image.max() <= 1.0:
            image = image * 255.0
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if bgr:
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


def draw_sample(image: np.ndarray, sample, meta: dict, factor: int = 1
                ) -> tuple[np.ndarray, list]:
    """``image`` enlarged ``factor`` times (:func:`~densevit.visualization.enlarge`) with
    ``sample``'s annotations drawn (crowd regions in grey, labelled "crowd"); returns it and the
    label maps drawn (for one legend over all panels)."""
    from densevit.visualization import draw_boxes, draw_instances, draw_sem_seg, enlarge
    classes = list(meta.get('classes') or [])
    palette = meta.get('palette')
    image = enlarge(image, factor)
    label_maps = []
    if 'gt_sem_seg' in sample:
        labels = sample.gt_sem_seg.data[0].cpu().numpy()
        image = draw_sem_seg(image, enlarge(labels, factor), palette)
        label_maps.append(labels)
    if 'gt_instances' in sample and 'bboxes' in sample.gt_instances:
        gt = sample.gt_instances
        masks = (enlarge(gt.masks.cpu().numpy(), factor, axes=(1, 2))
                 if 'masks' in gt and len(gt.masks) else None)
        image = draw_instances(image, gt.bboxes.cpu().numpy() * factor,
                               gt.labels.cpu().numpy(), None, classes, palette, masks)
    crowd = sample.get('ignored_instances')
    if crowd is not None and 'bboxes' in crowd and len(crowd.bboxes):
        grey = (160, 160, 160)
        image = draw_boxes(image, crowd.bboxes.cpu().numpy() * factor,
                           [grey] * len(crowd.bboxes), ['crowd'] * len(crowd.bboxes))
    return image, label_maps


def _describe(sample, image: np.ndarray) -> str:
    h, w = image.shape[:2]
    text = f'{w}x{h}'
    if sample.metainfo.get('flip'):
        text += ', flipped'
    gt = sample.get('gt_instances')
    if gt is not None and 'bboxes' in gt:
        text += f', {len(gt.bboxes)} objects'
    return text


def browse(cfg, config: str, split: str, num: int, seed: int, out_dir: str,
           min_side: int = 0) -> list[str]:
    """Write ``num`` pictures of ``split`` samples to ``out_dir``; returns their paths. Panels
    whose shorter side is under ``min_side`` pixels are drawn enlarged (an integer factor)."""
    from PIL import Image

    from densevit.engine.hooks import safe_file_stem
    from densevit.progress import track
    from densevit.visualization import add_legend, display_factor, legend_entries, side_by_side
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dataset = build_dataset(cfg, split, config)
    if len(dataset) == 0:
        raise CLIError(f'the {split} dataset of {config} is empty (data_root '
                       f'{cfg.get("data_root")}; filter_cfg may have dropped every image)')
    loading = _loading_pipeline(dataset)
    bgr = bool((cfg.model.get('data_preprocessor') or {}).get('bgr_to_rgb'))
    meta = dataset.metainfo
    chosen = np.random.default_rng(seed).choice(len(dataset), size=min(num, len(dataset)),
                                                replace=False)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for idx in track(chosen.tolist(), desc=f'browse {split}'):
        packed = None
        for _ in range(10):  # a random step may reject a draw (returns None): draw again
            packed = dataset.prepare_data(idx)
            if packed is not None:
                break
        if packed is None:
            print(f'{split} sample {idx}: the pipeline rejected it 10 times; skipped')
            continue
        original = loading(copy.deepcopy(dataset.get_data_info(idx)))
        panels, titles, label_maps = [], [], []
        for name, item in (('original', original), ('after the pipeline', packed)):
            image = to_image(item['inputs'], dataset.pipeline.transforms, bgr)
            factor = display_factor(*image.shape[:2], min_side)
            drawn, maps = draw_sample(image, item['data_samples'], meta, factor)
            panels.append(drawn)
            titles.append(f'{name} {_describe(item["data_samples"], image)}')
            label_maps += maps
        picture = side_by_side(panels, titles)
        if label_maps:
            picture = add_legend(picture, legend_entries(label_maps, meta.get('classes') or [],
                                                         meta.get('palette')))
        stem = safe_file_stem(original['data_samples'].metainfo.get('img_path', str(idx)))
        path = osp.join(out_dir, f'{split}_{idx:05d}_{stem}.png')
        Image.fromarray(picture).save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None, prog: str | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        prog=prog, description='Draw dataset samples after the pipeline (what the model is '
        'fed), with their boxes, masks or label maps, beside the original image.')
    parser.add_argument('config', metavar='CONFIG', help='config file')
    parser.add_argument('--split', choices=SPLITS, default='train',
                        help='which dataloader\'s dataset (default train)')
    parser.add_argument('-n', '--num', type=int, default=8, metavar='N',
                        help='samples to draw (default 8)')
    parser.add_argument('--seed', type=int, default=0,
                        help='picks the samples and seeds the random transforms (default 0)')
    parser.add_argument('--out', required=True, metavar='DIR', help='folder for the PNGs')
    parser.add_argument('--min-side', type=int, default=384, metavar='PX',
                        help='draw images whose shorter side is smaller enlarged by a whole '
                        'factor, so boxes and labels stay legible (default 384; 0: never)')
    parser.add_argument('--data-root', metavar='DIR',
                        help='the dataset root (moves every path of the config, as '
                        '--cfg-options data_root=DIR does)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. data_root=data/synthetic/coco/')
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f'-n must be at least 1; got {args.num}')
    if not osp.isfile(args.config):
        raise CLIError(f'config file {args.config} does not exist')
    options = dict(args.cfg_options)
    if args.data_root:
        options['data_root'] = args.data_root
    from densevit.apis import load_config
    cfg = load_config(args.config, options)
    paths = browse(cfg, args.config, args.split, args.num, args.seed, args.out, args.min_side)
    print(f'wrote {len(paths)} pictures of {args.split} samples to {args.out}')
    return paths


__all__: list[Any] = ['main', 'browse', 'draw_sample', 'to_image', 'build_dataset']
