"""Measure densevit against the reference implementations, in one run, as ratios:
``densevit benchmark [TOPIC ...] [--quick] [--out BENCHMARKS.json]`` (also
``python tools/benchmark.py``).

Topics live in the repository's tools/benchmarks/ (one module each with
``run(quick) -> list[dict]``); an installed densevit without its repository has none to run.
The tables go to standard output; the progress through the topics, with the remaining time, to
standard error (densevit.progress).
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import platform
import runpy
import sys
import time

from densevit.progress import Progress

from ._repo import repo_file

TOPICS = ('vit', 'na2d', 'segmentation', 'msda', 'detection', 'sam', 'upernet', 'seg_loss',
          'scaling', 'pipeline', 'compile', 'checkpointing', 'amp')


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


def load_topic(topic: str):
    """The ``run`` function of tools/benchmarks/<topic>.py, for a topic of the fixed TOPICS.

    The topic modules import each other as ``benchmarks.<name>``, so tools/ goes on sys.path.
    """
    if topic not in TOPICS:
        raise ValueError(f'unknown benchmark topic {topic!r}; choose from {", ".join(TOPICS)}')
    folder = repo_file('tools', 'benchmarks', subcommand='benchmark')
    tools = osp.dirname(folder)
    if tools not in sys.path:
        sys.path.insert(0, tools)
    return runpy.run_path(osp.join(folder, f'{topic}.py'), run_name=f'benchmarks.{topic}')['run']


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    import torch
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[0])
    parser.add_argument('topics', nargs='*', metavar='TOPIC',
                        help=f'any of {", ".join(TOPICS)} (default: all)')
    parser.add_argument('--quick', action='store_true', help='small sizes, skip the slowest')
    parser.add_argument('--out', help='also write all rows as JSON')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.topics) - set(TOPICS))
    if unknown:
        parser.error(f'unknown topics {unknown}; choose from {", ".join(TOPICS)}')
    runs = {topic: load_topic(topic) for topic in args.topics or TOPICS}
    print(f'# densevit benchmarks  ({platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'{time.strftime("%Y-%m-%d")})')
    sys.stdout.flush()  # the header before any progress line, when both go to one log
    results = {}
    with Progress(len(runs), unit='topic') as bar:
        for topic, run in runs.items():
            bar.set_description(f'benchmark {topic}')
            results[topic] = run(quick=args.quick)
            bar.clear()  # the table takes the bar's line; the update draws the bar below it
            print_table(topic, results[topic])
            sys.stdout.flush()
            bar.update()
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
    return results
