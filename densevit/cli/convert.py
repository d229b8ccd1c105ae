"""Convert an official checkpoint to densevit's keys:
``densevit convert KIND IN OUT [--config CONFIG]`` (also ``python tools/convert_checkpoint.py``).

KIND is one of the converters in densevit.checkpoint (timm_vit, mae, deit, sam, vitdet, segmenter,
swin, nat, dinat, resnet, deformable_detr, dino, hf_upernet). With ``--config`` the converted
weights are loaded into that config's model (its backbone for backbone-only kinds) and the load
report is printed: missing, unexpected and resized keys.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    from densevit.checkpoint import converters
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[0])
    parser.add_argument('kind', help=f'one of: {", ".join(sorted(converters()))}')
    parser.add_argument('src', help='official checkpoint (.pth, .pkl, .safetensors)')
    parser.add_argument('dst', help='where to write the converted state dict (.pth)')
    parser.add_argument('--config', help='check the result by loading it into this model')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None):
    """Convert, write, and (with ``--config``) return the load report; None without.

    Each stage (read, convert, write, check) is one step of a densevit.progress counter on
    standard error; the results go to standard output once it is done.
    """
    import torch

    from densevit.checkpoint import get_converter, load_state_dict
    from densevit.checkpoint.reading import read_state_dict
    from densevit.progress import Progress
    args = parse_args(argv, prog)
    convert = get_converter(args.kind)
    stages = ('read', 'convert', 'write') + (('check',) if args.config else ())
    report = None
    with Progress(len(stages), unit='step') as bar:
        def stage(name: str) -> None:  # the bar names the stage under way
            bar.set_description(f'convert {args.kind} ({name})')

        stage('read')
        source = read_state_dict(args.src)
        bar.update()
        stage('convert')
        state = convert(source)
        del source
        bar.update()
        stage('write')
        os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
        torch.save(state, args.dst)
        bar.update()
        if args.config:
            from densevit.apis import init_model
            stage('check')
            model = init_model(args.config)
            # Whole-model converters (sam, vitdet, segmenter, deformable_detr, dino,
            # hf_upernet) prefix their keys with the part they fill; the others give backbone
            # keys without one.
            whole = any(k.startswith(('backbone.', 'neck.', 'head.')) for k in state)
            target = model if whole else model.backbone
            report = load_state_dict(target, state, log=False)
            bar.update()
    print(f'wrote {len(state)} tensors to {args.dst}')
    if report is not None:
        print(report)
    return report
