"""``densevit export CONFIG CHECKPOINT --format onnx|torch-export --out FILE``: an inference graph.

Exports a segmentor, a detector, or SAM's image encoder or prompt/mask decoder (``--part``) at a
fixed image size (the config's test input size unless ``--input-size``), with the data
preprocessor's normalisation and padding inside, as an ONNX file (run it with onnxruntime) or a
``torch.export`` program (``torch.export.load(FILE).module()``). The graph is then run once on a
random input and compared with the model; the command prints the largest difference. FILE is
replaced only when the export succeeds.
"""
from __future__ import annotations

import argparse
import os.path as osp

from . import CLIError

DESCRIPTION = """\
Export a segmentor, a detector or SAM's encoder / decoder at a fixed image size, with
the preprocessor's normalisation and padding inside; then compare the file with the model."""

GRAPHS = """\
graphs (float32 unless said; images are pixels 0..255 in the pipeline's channel order, RGB,
resized as the test pipeline resizes; the graph normalises and pads them):
  segmentor    image (B, 3, H, W) -> logits (B, K, H, W), labels (B, H, W) int64
  detector     image (B, 3, H, W) -> boxes (B, N, 4) xyxy pixels, scores (B, N), labels (B, N)
               int64 [, masks (B, N, H, W) bool], N = test_cfg.max_per_img; fixed batch
  SAM encoder  image (B, 3, H, W), longer side at image_size -> image_embeddings (B, C, h, w)
  SAM decoder  image_embeddings (1, C, h, w), point_coords (N, P, 2) x, y in input pixels,
               point_labels (N, P) 1 fg, 0 bg, 2 / 3 box corners, -1 padding (one when no box),
               mask_input (N, 1, 4h, 4w), has_mask_input (N,) 1 or 0 -> masks (N, 4, H, W)
               logits (> 0 in the mask; 0 single-mask output, 1..3 multimask), iou_predictions
               (N, 4), low_res_masks (N, 4, 4h, 4w); N prompts (the batch), P points (dynamic)"""


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    from densevit.export import FORMATS, SAM_PARTS
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=GRAPHS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='its trained weights (.pth)')
    parser.add_argument('--format', required=True, choices=FORMATS,
                        help='onnx (opset 18) or torch-export (a .pt2 program)')
    parser.add_argument('--out', required=True, metavar='FILE', help='file to write')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='image size (default: the config\'s test input size)')
    parser.add_argument('--part', choices=SAM_PARTS, help='which graph of a SAM model')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='dynamic batch B (N prompts) where the graph allows it')
    parser.add_argument('--batch-size', type=int, default=1, metavar='B',
                        help='fixed batch size otherwise (default 1)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        metavar='KEY=VALUE', help='override config keys')
    return parser.parse_args(argv)


def graph_size(cfg, model, requested) -> tuple[tuple[int, int], str]:
    """((H, W), where it came from): ``--input-size``, else the config's test input size."""
    if requested:
        return tuple(requested), '--input-size'
    if hasattr(model, 'image_size'):  # SAM: the square model input
        return (model.image_size, model.image_size), f'the model\'s image_size={model.image_size}'
    from .info import input_size
    try:
        return input_size(cfg)
    except CLIError as exc:
        raise CLIError(str(exc).replace('--size', '--input-size')) from None


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Export and check; returns {'files': [...], 'size': (H, W), 'differences': {...}}."""
    args = parse_args(argv, prog)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise CLIError(f'{what} {path} does not exist')

    from densevit import export
    from densevit.apis import init_model
    model = init_model(args.config, args.checkpoint, cfg_options=args.cfg_options)
    kind = export.model_kind(model)
    if kind == 'sam' and args.part is None:
        raise CLIError(f'{args.config} is a SAM model: give --part encoder or --part decoder')
    size, source = graph_size(model.cfg, model, args.input_size)
    graph = export.build_graph(model, size, args.part)
    if args.dynamic_batch and graph.fixed_batch:
        raise CLIError(f'this {type(model).__name__} exports with a fixed batch '
                       f'({graph.fixed_batch}); drop --dynamic-batch, give --batch-size')
    if kind == 'segmentor' and model.test_cfg.get('tta'):
        print('note: test_cfg.tta (test-time augmentation) is not part of the graph')
    files = export.export_graph(graph, args.out, args.format, batch_size=args.batch_size,
                                dynamic_batch=args.dynamic_batch)
    what = f'{type(model).__name__}' + (f' {args.part}' if args.part else '')
    batch = 'dynamic batch' if args.dynamic_batch else f'batch {args.batch_size}'
    print(f'wrote {what} at {size[0]}x{size[1]} (from {source}), {batch}, as {args.format}: '
          + ', '.join(f'{f} ({osp.getsize(f) / 2**20:.1f} MB)' for f in files))
    try:
        differences = export.compare(graph, files[-1], args.format,
                                     batch_size=2 if args.dynamic_batch else args.batch_size)
    except ImportError as exc:  # onnxruntime missing: the file is written, only not checked
        print(f'not checked: {exc}')
        return dict(files=files, size=size, differences=None)
    print('exported vs model on a random input: ' + ', '.join(
        f'{name} {value:.2g} ({how})' for name, (value, how) in differences.items()))
    return dict(files=files, size=size, differences=differences)
