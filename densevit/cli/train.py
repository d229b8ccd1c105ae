"""``densevit train CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
[--launcher pytorch]`` (also ``python tools/train.py``; tools/dist_train.sh runs it under torchrun).
"""
import argparse
import os.path as osp

import torch
from mmengine.config import DictAction

from densevit.apis import load_config
from densevit.engine import build_runner


def parse_args(argv=None, prog=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog,
                                     description='Train a densevit model from a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                        help='resume from CKPT, or, when no path is given, from the newest '
                        'checkpoint of the work dir that loads (an unreadable newest one is '
                        'skipped for the previous one, with a warning)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (float16 on GPU, bfloat16 autocast on CPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. data_root=data/other/ '
                        'train_cfg.max_iters=100; a key must exist in the config or be a keyword '
                        'of the module there: write +key=value to add a new one')
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                        help="'pytorch' under torchrun (tools/dist_train.sh)")
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None, prog=None) -> None:
    args = parse_args(argv, prog)
    cfg = load_config(args.config, args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        wrapper = 'AmpOptimWrapper' if torch.cuda.is_available() else 'CPUAutocastOptimWrapper'
        cfg.optim_wrapper.type = wrapper
        if wrapper == 'AmpOptimWrapper':
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    runner = build_runner(cfg, args.launcher)
    runner.train()

