"""``densevit infer CONFIG CHECKPOINT INPUT [INPUT ...] --out DIR``: predictions on images.

For every image it writes an overlay, ``DIR/vis/<name>.png``, and the raw predictions:

- detection (``Detector``, ``PromptedInstanceSegmenter``): ``DIR/predictions.json``, COCO
  results (``image_id``, ``category_id``, ``bbox`` x y w h, ``score`` and, for mask models,
  ``segmentation`` as a compressed RLE), every prediction whatever ``--score-thr`` (that only
  chooses what is drawn);
- semantic segmentation (``Segmentor``): ``DIR/pred/<name>.png``, the class index of every pixel
  (uint8, uint16 beyond 256 classes);
- SAM (``PromptableSegmenter``): ``DIR/masks.json``, one record per mask with its RLE
  (pycocotools), predicted IoU, box and prompt. The prompts of ``--points`` / ``--boxes`` apply
  to every image; without prompts, SamAutomaticMaskGenerator segments everything.

``image_id`` is the file's stem as a number when it is one (COCO names its files so), else the
file name. Images go through the model ``--batch-size`` at a time (SAM: the image encoder; the
automatic generator embeds one image, or crop, at a time). CHECKPOINT ``-`` runs a model whose
config names its own weights (a PromptedInstanceSegmenter's detector and segmenter).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
from typing import Any, Sequence

import numpy as np
from mmengine.config import DictAction

from . import CLIError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
TASKS = ('detection', 'segmentation', 'sam')


# ---------------------------------------------------------------- arguments
def collect_images(inputs: Sequence[str]) -> list[str]:
    """Image paths from files, folders (their image files, sorted, not recursive) and glob
    patterns, in the order given, each once; a CLIError names an input that gives none."""
    paths: list[str] = []
    for item in inputs:
        if osp.isfile(item):
            found = [item]
        elif osp.isdir(item):
            found = sorted(osp.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_EXTENSIONS)
                           and osp.isfile(osp.join(item, name)))
            if not found:
                raise CLIError(f'folder {item} holds no image file ({", ".join(IMAGE_EXTENSIONS)})')
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if osp.isfile(p))
            if not found:
                raise CLIError(f'pattern {item!r} matches no file')
        else:
            raise CLIError(f'input {item} does not exist (give an image, a folder or a glob '
                           'pattern)')
        paths += [p for p in found if p not in paths]
    return paths


def _numbers(text: str, what: str, counts: tuple[int, ...], syntax: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        values = []
    if len(values) not in counts or not all(np.isfinite(values)):
        raise CLIError(f'{what} {text!r} is not {syntax}')
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``'x,y'`` or ``'x,y,label'`` (label 1 = foreground, the default; 0 = background)."""
    values = _numbers(text, '--points entry', (2, 3), 'x,y or x,y,label (label 1 or 0)')
    label = values[2] if len(values) == 3 else 1
    if label not in (0, 1):
        raise CLIError(f'--points entry {text!r}: the label must be 1 (foreground) or 0 '
                       f'(background); got {label:g}')
    return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``'x1,y1,x2,y2'`` with x1 <= x2 and y1 <= y2."""
    x1, y1, x2, y2 = _numbers(text, '--boxes entry', (4,), 'x1,y1,x2,y2')
    if x2 < x1 or y2 < y1:
        raise CLIError(f'--boxes entry {text!r}: need x1 <= x2 and y1 <= y2')
    return x1, y1, x2, y2


# ---------------------------------------------------------------- the model
def task_of(model_type: str) -> str:
    """'detection', 'segmentation' or 'sam' for a registered model type name; a CLIError naming
    the type (and the closest registered one) otherwise."""
    import difflib

    import densevit.models  # noqa: F401  (registers the model types)
    from densevit.models.tasks.detector import Detector
    from densevit.models.tasks.promptable_segmenter import PromptableSegmenter
    from densevit.models.tasks.prompted_instance_segmenter import PromptedInstanceSegmenter
    from densevit.models.tasks.segmentor import Segmentor
    from densevit.registry import MODELS
    cls = MODELS.get(model_type) if isinstance(model_type, str) else model_type
    if cls is None:
        close = difflib.get_close_matches(str(model_type), list(MODELS.module_dict), n=1)
        raise CLIError(f'unknown model type {model_type!r}'
                       + (f'; did you mean {close[0]!r}?' if close else ''))
    for base, task in ((Segmentor, 'segmentation'), (Detector, 'detection'),
                       (PromptedInstanceSegmenter, 'detection'), (PromptableSegmenter, 'sam')):
        if issubclass(cls, base):
            return task
    raise CLIError(f'densevit infer runs Segmentor, Detector, PromptedInstanceSegmenter and '
                   f'PromptableSegmenter models; the config builds a {cls.__name__}')


def _loads_own_weights(model_type) -> bool:
    """Whether the model loads its parts' weights as it is built (its config names them)."""
    from densevit.models.tasks.prompted_instance_segmenter import PromptedInstanceSegmenter
    from densevit.registry import MODELS
    cls = MODELS.get(model_type) if isinstance(model_type, str) else model_type
    return isinstance(cls, type) and issubclass(cls, PromptedInstanceSegmenter)


def dataset_meta(model) -> dict:
    """The checkpoint's dataset metainfo (classes, palette, COCO cat_ids) or, when it records
    none, that of the config's test dataset type with the config's ``metainfo`` overrides."""
    if model.dataset_meta:
        return dict(model.dataset_meta)
    from densevit.registry import DATASETS
    dataset = model.cfg.get('test_dataloader', {}).get('dataset', {})
    cls = DATASETS.get(dataset.get('type', '')) if isinstance(dataset.get('type'), str) else None
    meta = dict(getattr(cls, 'METAINFO', None) or {})
    override = dict(dataset.get('metainfo') or {})
    if 'classes' in override and 'cat_ids' in meta and 'cat_ids' not in override:
        ids = dict(zip(meta['classes'], meta['cat_ids']))
        meta.pop('cat_ids')
        if all(name in ids for name in override['classes']):
            override['cat_ids'] = tuple(ids[name] for name in override['classes'])
    meta.update(override)
    return meta


# ---------------------------------------------------------------- raw predictions
def image_id_of(path: str):
    """The COCO image id of a file: its stem as an int when it is digits, else its name."""
    stem = osp.splitext(osp.basename(path))[0]
    return int(stem) if stem.isdigit() else osp.basename(path)


def encode_mask(mask: np.ndarray) -> dict:
    """A (H, W) bool mask as COCO's compressed RLE, counts as text (JSON-ready)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def _xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def coco_results(image_id, pred, cat_ids: Sequence[int] | None) -> list[dict]:
    """COCO results records of one image's ``pred_instances``."""
    bboxes = pred.bboxes.cpu().numpy()
    labels = pred.labels.cpu().numpy()
    scores = pred.scores.cpu().numpy()
    masks = pred.masks.cpu().numpy().astype(bool) if 'masks' in pred else None
    records = []
    for k in range(len(scores)):
        label = int(labels[k])
        record = dict(image_id=image_id,
                      category_id=int(cat_ids[label]) if cat_ids else label,
                      bbox=_xywh(bboxes[k]), score=round(float(scores[k]), 5))
        if masks is not None:
            record['segmentation'] = encode_mask(masks[k])
        records.append(record)
    return records


# ---------------------------------------------------------------- SAM

def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def sam_embed(predictor, images: Sequence[np.ndarray]) -> list[tuple]:
    """(embedding (1, C, h, w), original size, input size) of each image, the image encoder run
    once for all of them; what ``SamPredictor.set_image`` computes for one."""
    import torch
    resized = [torch.as_tensor(predictor.transform.apply_image(image), device=predictor.device)
               .permute(2, 0, 1) for image in images]  # (h, w, 3) -> (3, h, w)
    model = predictor.model
    with torch.no_grad():
        batch = model.data_preprocessor(dict(inputs=resized, data_samples=None), False)
        features = model.image_embedding(batch['inputs'])
    return [(features[i:i + 1], image.shape[:2], tuple(r.shape[-2:]))
            for i, (image, r) in enumerate(zip(images, resized))]


def _set_embedding(predictor, embedding: tuple) -> None:
    predictor.reset_image()
    predictor.features, original_size, input_size = embedding
    predictor.original_size = tuple(int(s) for s in original_size)
    predictor.input_size = tuple(int(s) for s in input_size)
    predictor.is_image_set = True


def sam_prompted(predictor, points: list, boxes: list) -> list[dict]:
    """Masks for the prompts: one per box (each with all the points), or one for the points
    alone (the best of SAM's three when there is a single point). Records: mask (H, W) bool,
    predicted IoU, prompt."""
    coords = np.asarray([p[:2] for p in points], np.float64) if points else None
    labels = np.asarray([p[2] for p in points], np.int64) if points else None
    prompt_points = [list(p) for p in points]
    out = []
    for box in boxes or [None]:
        single_point = box is None and len(points) == 1
        masks, ious, _ = predictor.predict(point_coords=coords, point_labels=labels,
                                           box=None if box is None else np.asarray(box),
                                           multimask_output=single_point)
        best = int(np.argmax(ious))
        prompt = dict(points=prompt_points) if points else {}
        if box is not None:
            prompt['box'] = list(box)
        out.append(dict(mask=masks[best], score=float(ious[best]), prompt=prompt))
    return out


# ---------------------------------------------------------------- the command
def parse_args(argv=None, prog=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description='Predict on images: an overlay PNG per image in DIR/vis and the '
        'raw predictions (detection: DIR/predictions.json, COCO results; segmentation: '
        'DIR/pred/<name>.png class indices; SAM: DIR/masks.json, RLE). SAM prompts from '
        '--points / --boxes apply to every image; with none, SAM segments everything '
        '(automatic mask generation).')
    parser.add_argument('config', metavar='CONFIG', help='config file')
    parser.add_argument('checkpoint', metavar='CHECKPOINT',
                        help='checkpoint file; "-" for a model whose config names its weights '
                        '(PromptedInstanceSegmenter)')
    parser.add_argument('inputs', metavar='INPUT', nargs='+',
                        help="image files, folders or glob patterns ('imgs/*.jpg')")
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    parser.add_argument('--score-thr', type=float, default=None, metavar='T',
                        help='detection: draw detections scoring at least this (default 0.3; '
                        'predictions.json keeps all); SAM automatic masks: predicted-IoU '
                        'threshold (default 0.88)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ... (default cpu)')
    parser.add_argument('--batch-size', type=int, default=1, metavar='N',
                        help='images per forward (default 1: a batch pads its images to one '
                        'size, which moves a detector\'s numbers slightly)')
    parser.add_argument('--points', nargs='+', default=[], metavar='X,Y[,L]',
                        help='SAM point prompts in image pixels; L = 1 foreground (default), '
                        '0 background')
    parser.add_argument('--boxes', nargs='+', default=[], metavar='X1,Y1,X2,Y2',
                        help='SAM box prompts in image pixels; one mask per box')
    parser.add_argument('--min-side', type=int, default=384, metavar='PX',
                        help='overlays of smaller images are drawn enlarged by a whole factor '
                        '(default 384; 0: never)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. model.test_cfg.max_per_img=50')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1; got {args.batch_size}')
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """Run ``densevit infer``; returns {'task', 'images', 'overlays', 'predictions'} (paths)."""
    args = parse_args(argv, prog)
    points = [parse_point(text) for text in args.points]
    boxes = [parse_box(text) for text in args.boxes]
    if not osp.isfile(args.config):
        raise CLIError(f'config file {args.config} does not exist')
    from densevit.apis import load_config
    cfg = load_config(args.config, args.cfg_options)
    task = task_of(cfg.model.get('type'))
    if args.checkpoint == '-':
        if not _loads_own_weights(cfg.model.get('type')):
            raise CLIError(f'{args.config}: a {cfg.model.get("type")} needs a CHECKPOINT ("-" '
                           'only for models whose config names their weights, such as a '
                           'PromptedInstanceSegmenter)')
        args.checkpoint = None
    elif not osp.isfile(args.checkpoint):
        raise CLIError(f'checkpoint {args.checkpoint} does not exist')
    if (points or boxes) and task != 'sam':
        raise CLIError(f'--points and --boxes prompt SAM models; {args.config} builds a '
                       f'{cfg.model.type} ({task})')
    paths = collect_images(args.inputs)

    from PIL import Image

    from densevit.apis import init_model
    from densevit.datasets.transforms import read_image
    from densevit.progress import Progress
    from densevit.visualization import (display_factor, draw_instances, draw_sam, draw_sem_seg,
                                        enlarge)
    model = init_model(cfg, args.checkpoint, device=args.device)
    meta = dataset_meta(model)
    classes = list(meta.get('classes') or [])
    palette = meta.get('palette')
    vis_dir = osp.join(args.out, 'vis')
    os.makedirs(vis_dir, exist_ok=True)
    if task == 'segmentation':
        os.makedirs(osp.join(args.out, 'pred'), exist_ok=True)
    from densevit.engine.hooks import UniqueStems
    names = UniqueStems()
    records: list[dict] = []
    overlays: list[str] = []
    generator = predictor = None
    if task == 'sam':
        from densevit.apis import SamAutomaticMaskGenerator, SamPredictor
        if points or boxes:
            predictor = SamPredictor(model)
        else:
            options = dict(output_mode='coco_rle')
            if args.score_thr is not None:
                options['pred_iou_thresh'] = args.score_thr
            generator = SamAutomaticMaskGenerator(model, **options)
    score_thr = 0.3 if args.score_thr is None else args.score_thr

    with Progress(len(paths), desc='infer', unit='img') as progress:
        for start in range(0, len(paths), args.batch_size):
            batch_paths = paths[start:start + args.batch_size]
            images = [read_image(path) for path in batch_paths]
            batch_names = [names(path) for path in batch_paths]
            if task in ('detection', 'segmentation'):
                from densevit.apis import inference_model
                samples = inference_model(model, images)
            elif predictor is not None:
                embeddings = sam_embed(predictor, images)
            for k, (path, image, name) in enumerate(zip(batch_paths, images, batch_names)):
                f = display_factor(*image.shape[:2], args.min_side)  # overlays only
                shown = enlarge(image, f)
                if task == 'segmentation':
                    labels = samples[k].pred_sem_seg.data[0].cpu().numpy()
                    drawn = draw_sem_seg(shown, enlarge(labels, f), palette, classes=classes or None)
                    wide = max(len(classes), int(labels.max()) + 1) > 256
                    Image.fromarray(labels.astype(np.uint16 if wide else np.uint8)).save(
                        osp.join(args.out, 'pred', f'{name}.png'))
                elif task == 'detection':
                    pred = samples[k].pred_instances
                    masks = pred.masks.cpu().numpy().astype(bool) if 'masks' in pred else None
                    drawn = draw_instances(shown, pred.bboxes.cpu().numpy() * f,
                                           pred.labels.cpu().numpy(), pred.scores.cpu().numpy(),
                                           classes, palette,
                                           None if masks is None else enlarge(masks, f, (1, 2)),
                                           score_thr)
                    records += coco_results(image_id_of(path), pred, meta.get('cat_ids'))
                elif predictor is not None:
                    _set_embedding(predictor, embeddings[k])
                    results = sam_prompted(predictor, points, boxes)
                    predictor.reset_image()
                    drawn = draw_sam(shown, enlarge(np.stack([r['mask'] for r in results]), f, (1, 2)),
                                     np.asarray([r['score'] for r in results]),
                                     np.asarray([p[:2] for p in points]).reshape(-1, 2) * f,
                                     np.asarray([p[2] for p in points]),
                                     np.asarray(boxes).reshape(-1, 4) * f)
                    records += [dict(image_id=image_id_of(path), file_name=osp.basename(path),
                                     segmentation=encode_mask(r['mask']), score=round(r['score'], 5),
                                     bbox=_mask_box(r['mask']), prompt=r['prompt'])
                                for r in results]
                else:
                    from pycocotools import mask as mask_utils
                    found = sorted(generator.generate(image), key=lambda r: -r['area'])
                    masks = np.zeros((0, *image.shape[:2]), bool)
                    if found:
                        masks = np.stack([mask_utils.decode(r['segmentation']).astype(bool)
                                          for r in found])
                    seeds = np.asarray([r['point_coords'][0] for r in found]).reshape(-1, 2)
                    drawn = draw_sam(shown, enlarge(masks, f, (1, 2)), None, seeds * f,
                                     np.ones(len(seeds), np.int64))
                    for r in found:
                        r['segmentation']['counts'] = _text(r['segmentation']['counts'])
                    records += [dict(image_id=image_id_of(path), file_name=osp.basename(path),
                                     segmentation=r['segmentation'],
                                     score=round(float(r['predicted_iou']), 5),
                                     bbox=[float(v) for v in r['bbox']],
                                     stability_score=round(float(r['stability_score']), 5),
                                     prompt=dict(points=[[float(v) for v in r['point_coords'][0]]
                                                         + [1]]))
                                for r in found]
                overlay = osp.join(vis_dir, f'{name}.png')
                Image.fromarray(drawn).save(overlay)
                overlays.append(overlay)
                progress.update()

    predictions = None
    if task == 'detection':
        predictions = osp.join(args.out, 'predictions.json')
    elif task == 'sam':
        predictions = osp.join(args.out, 'masks.json')
    if predictions:
        with open(predictions, 'w') as f:
            json.dump(records, f)
    what = {'detection': f'{len(records)} detections in {predictions}',
            'segmentation': f'label maps in {osp.join(args.out, "pred")}',
            'sam': f'{len(records)} masks in {predictions}'}[task]
    print(f'{len(paths)} images ({task}): overlays in {vis_dir}, {what}')
    return dict(task=task, images=paths, overlays=overlays, predictions=predictions)


def _text(counts) -> str:
    return counts.decode('ascii') if isinstance(counts, bytes) else counts
