"""Write the synthetic COCO 2017 / ADE20K stand-in sets.

    densevit make-synthetic OUT [--seed 0] [--num-train 200] [--num-val 50] [--size 128]
                                [--only coco|ade20k] [--recolor-seed N]

(also ``python tools/make_synthetic.py``) writes OUT/coco (the COCO data_root) and
OUT/ade20k/ADEChallengeData2016 (the ADE20K data_root), showing each split's progress on standard
error (a bar on a terminal, periodic lines otherwise).
"""
from __future__ import annotations

import argparse
import os.path as osp
import time


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('out', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--size', type=int, default=128, help='long side of the images')
    parser.add_argument('--only', choices=('coco', 'ade20k'), default=None)
    parser.add_argument('--recolor-seed', type=int, default=None,
                        help='redraw every colour from this seed; labels stay those of --seed')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from densevit.datasets.synthetic import make_ade20k, make_coco
    args = parse_args(argv, prog)
    common = dict(seed=args.seed, num_train=args.num_train, num_val=args.num_val, size=args.size,
                  recolor_seed=args.recolor_seed, progress=True)
    if args.only in (None, 'coco'):
        start = time.perf_counter()
        root = make_coco(osp.join(args.out, 'coco'), **common)
        print(f'COCO stand-in: {root} ({time.perf_counter() - start:.1f} s)', flush=True)
    if args.only in (None, 'ade20k'):
        start = time.perf_counter()
        root = make_ade20k(osp.join(args.out, 'ade20k'), **common)
        print(f'ADE20K stand-in: {root} ({time.perf_counter() - start:.1f} s)', flush=True)
