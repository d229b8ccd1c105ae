"""``densevit plot WORK_DIR [--keys ...] --out FILE.png``: training curves of a work dir.

Reads mmengine's scalar logs, ``WORK_DIR/<timestamp>/vis_data/scalars.json`` (one JSON object per
line; training lines carry ``iter``, validation lines only ``step``), in timestamp order so a
resumed run continues its curves. Draws one subplot per group over the iteration: the total
loss, the loss terms, the learning rate, the validation metrics (at the last logged iteration
before each validation) and, when ``--keys`` names them, any other scalar.
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import glob
import json
import os.path as osp

from . import CLIError

_BOOKKEEPING = {'step', 'iter', 'epoch', 'time', 'data_time', 'memory'}


def scalar_files(work_dir: str) -> list[str]:
    """The scalars.json files of ``work_dir`` (a work dir, one of its timestamp folders, or the
    file itself), oldest first; a CLIError naming the work dir when there is none."""
    if osp.isfile(work_dir):
        return [work_dir]
    if not osp.isdir(work_dir):
        raise CLIError(f'work dir {work_dir} does not exist')
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')) +
                   glob.glob(osp.join(work_dir, 'vis_data', 'scalars.json')))
    if not files:
        raise CLIError(f'no scalar log in {work_dir} (looked for '
                       f'{osp.join(work_dir, "<timestamp>", "vis_data", "scalars.json")}; '
                       'mmengine writes it while training)')
    return files


def read_scalars(files: list[str]) -> tuple[dict[str, list], dict[str, list]]:
    """({key: [(iteration, value)]} of training lines, same of validation lines).

    A validation line is placed at the iteration of the last training line before it when its
    ``step`` is that line's epoch (``log_metric_by_epoch``), else at its ``step``. Files holding
    no training line (a test run in the same work dir) are skipped when others hold some.
    """
    records = []
    for path in files:
        with open(path, encoding='utf-8') as f:
            rows = []
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise CLIError(f'{path}:{number}: not a JSON line ({exc.msg})') from None
        records.append(rows)
    if any('iter' in row for rows in records for row in rows):
        records = [rows for rows in records if any('iter' in row for row in rows)]
    train: dict[str, list] = {}
    val: dict[str, list] = {}
    for rows in records:
        last = None
        for row in rows:
            if 'iter' in row:
                last = row
                target, x = train, row['iter']
            else:
                step = row.get('step', 0)
                by_epoch = last is not None and last.get('epoch') == step
                target, x = val, (last['iter'] if by_epoch else step)
            for key, value in row.items():
                if key not in _BOOKKEEPING and isinstance(value, (int, float)):
                    target.setdefault(key, []).append((x, float(value)))
    return train, val


def group_keys(train: dict, val: dict, patterns: list[str] | None) -> dict[str, list[tuple]]:
    """{subplot title: [(source, key)]}; default keys: losses, lr, every validation metric."""
    def is_loss(key): return 'loss' in key
    def is_lr(key): return key == 'lr' or key.endswith(('_lr', '.lr'))
    available = [('train', k) for k in train] + [('val', k) for k in val]
    if patterns:
        chosen = []
        for pattern in patterns:
            hits = [item for item in available if fnmatch.fnmatchcase(item[1], pattern)]
            if not hits:
                names = sorted({k for _, k in available})
                close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
                hint = f'closest: {", ".join(close)}' if close else f'keys: {", ".join(names)}'
                raise CLIError(f'no scalar key matches {pattern!r} ({hint})')
            chosen += [item for item in hits if item not in chosen]
    else:
        chosen = [item for item in available
                  if item[0] == 'val' or is_loss(item[1]) or is_lr(item[1])]
    groups = {'loss': [], 'loss terms': [], 'learning rate': [], 'validation': [], 'other': []}
    for source, key in chosen:
        if source == 'val':
            title = 'validation'
        elif key == 'loss':
            title = 'loss'
        elif is_loss(key):
            title = 'loss terms'
        elif is_lr(key):
            title = 'learning rate'
        else:
            title = 'other'
        groups[title].append((source, key))
    return {title: items for title, items in groups.items() if items}


def plot(work_dir: str, out: str, keys: list[str] | None = None) -> dict[str, list[tuple]]:
    """Draw the curves of ``work_dir`` to ``out`` (PNG); returns the groups drawn."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train, val = read_scalars(scalar_files(work_dir))
    if not train and not val:
        raise CLIError(f'the scalar log of {work_dir} holds no values yet')
    groups = group_keys(train, val, keys)
    if not groups:
        raise CLIError(f'nothing to plot in {work_dir}: no loss, lr or validation key '
                       f'(keys: {", ".join(sorted(set(train) | set(val)))}); choose with --keys')
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.6 * len(groups)), sharex=True,
                             squeeze=False)
    for ax, (title, items) in zip(axes[:, 0], groups.items()):
        for source, key in items:
            points = (train if source == 'train' else val)[key]
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker='o' if len(points) < 20 else None, markersize=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(items) > 1 or title in ('loss terms', 'validation', 'other'):
            ax.legend(fontsize=7 if len(items) <= 8 else 5, ncol=1 if len(items) <= 8 else 3)
    axes[-1, 0].set_xlabel('iteration')
    fig.suptitle(osp.basename(osp.normpath(work_dir)), fontsize=10)
    fig.tight_layout()
    if osp.dirname(osp.abspath(out)):
        import os
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return groups


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog=prog, description='Plot the loss terms, learning rate and validation metrics of a '
        'work dir over iterations (from mmengine\'s vis_data/scalars.json).')
    parser.add_argument('work_dir', metavar='WORK_DIR', help='the training run\'s work dir')
    parser.add_argument('--keys', nargs='+', metavar='KEY',
                        help="scalar keys or fnmatch patterns, e.g. 'loss*' lr mIoU "
                        '(default: every loss, lr and validation metric)')
    parser.add_argument('--out', required=True, metavar='FILE.png', help='the picture to write')
    args = parser.parse_args(argv)
    groups = plot(args.work_dir, args.out, args.keys)
    print(f'wrote {args.out}: ' + '; '.join(f'{title}: {", ".join(k for _, k in items)}'
                                           for title, items in groups.items()))
    return groups
