"""Measure densevit against the reference implementations, in one run, as ratios:
``python tools/benchmark.py [TOPIC ...] [--quick] [--out BENCHMARKS.json]``.

Topics live in tools/benchmarks/ (one module each with ``run(quick) -> list[dict]``).
"""
import argparse
import importlib
import json
import os.path as osp
import platform
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
TOPICS = ('vit', 'na2d', 'segmentation', 'msda', 'detection', 'sam')


def _fmt(value) -> str:
    if isinstance(value, float):
        return f'{value:.3g}'
    return str(value)


def print_table(topic: str, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print(f'\n### {topic}\n')
    print('| ' + ' | '.join(columns) + ' |')
    print('|' + '---|' * len(columns))
    for row in rows:
        print('| ' + ' | '.join(_fmt(row.get(c, '')) for c in columns) + ' |')


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('topics', nargs='*', metavar='TOPIC',
                        help=f'any of {", ".join(TOPICS)} (default: all)')
    parser.add_argument('--quick', action='store_true', help='small sizes, skip the slowest')
    parser.add_argument('--out', help='also write all rows as JSON')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.topics) - set(TOPICS))
    if unknown:
        parser.error(f'unknown topics {unknown}; choose from {", ".join(TOPICS)}')
    print(f'# densevit benchmarks  ({platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'{time.strftime("%Y-%m-%d")})')
    results = {}
    for topic in args.topics or TOPICS:
        module = importlib.import_module(f'benchmarks.{topic}')
        results[topic] = module.run(quick=args.quick)
        print_table(topic, results[topic])
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
