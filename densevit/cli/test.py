"""``densevit test CONFIG [CHECKPOINT] [--out FILE] [--show-dir DIR] [--metrics-out FILE.json]
[--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]`` (also ``python tools/test.py``):
evaluate a checkpoint on the config's test set.

CHECKPOINT may be left out only for a model whose config names its own weights (e.g. a
``PromptedInstanceSegmenter``, which loads its detector's and segmenter's)."""
import argparse
import json
import os
import os.path as osp

from mmengine.config import DictAction

from densevit.apis import load_config
from densevit.engine import build_runner


# models that load their parts' weights themselves, so they are evaluated without a checkpoint
_SELF_LOADING = ('PromptedInstanceSegmenter',)


def parse_args(argv=None, prog=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description='Evaluate a densevit checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', nargs='?',
                        help='checkpoint file (leave out only for a config that names its '
                             'own weights)')
    parser.add_argument('--work-dir', help='where the test log goes '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--out', help='dump every prediction to this pickle file')
    parser.add_argument('--show-dir', help='draw predictions on the images into this folder')
    parser.add_argument('--metrics-out', help='write the final metrics as one flat JSON object')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. data_root=data/other/; a key must '
                        'exist in the config or be a keyword of the module there: write '
                        '+key=value to add a new one')
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None, prog=None) -> dict:
    args = parse_args(argv, prog)
    cfg = load_config(args.config, args.cfg_options)
    if args.checkpoint is None:
        if cfg.model.get('type') not in _SELF_LOADING:
            raise SystemExit(f'{args.config}: a {cfg.model.get("type")} needs a CHECKPOINT to '
                             'evaluate')
    elif not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='ShowResultHook', out_dir=args.show_dir)]
    if args.out:
        evaluator = cfg.test_evaluator
        metrics = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
        cfg.test_evaluator = metrics + [dict(type='DumpResults', out_file_path=args.out)]
    runner = build_runner(cfg, args.launcher)
    metrics = runner.test()
    if args.metrics_out and runner.rank == 0:
        os.makedirs(osp.dirname(osp.abspath(args.metrics_out)), exist_ok=True)
        with open(args.metrics_out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2, sort_keys=True)
    return metrics

