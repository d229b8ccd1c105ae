"""``densevit zoo [--out docs/model_zoo.md] [--check]``: the model zoo page, from the configs.

One row per config under configs/ (``_base_`` excluded): the task, the backbone, the parameters
and FLOPs of the model the config builds (densevit info's counts), the published number the
config targets with its source (the ``# Target:`` lines of its header), the weights it loads, and
whether densevit has reproduced the number: "not yet" for every config, because none has been
trained and evaluated on the real COCO or ADE20K. ``--check`` writes nothing and exits 1 with the
differing rows when the page is not what the configs give.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import glob
import os
import os.path as osp
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import CLIError
from ._repo import REPO

__all__ = ['main', 'entry', 'render', 'table_rows', 'page_flops', 'stale_rows', 'zoo_configs',
           'target', 'describe', 'Entry', 'COLUMNS', 'REPRODUCED']

DEFAULT_OUT = osp.join('docs', 'model_zoo.md')
REPRODUCED = 'not yet'

_TASKS = {
    'Segmentor': 'semantic segmentation',
    'Detector': 'detection',
    'PromptableSegmenter': 'promptable segmentation',
    'PromptedInstanceSegmenter': 'instance segmentation (detector boxes prompt a SAM decoder)',
    'ImageEncoder': 'image encoder (features only)',
}

# The row's columns, in the page's order; FLOPs is the only slow one.
COLUMNS = ('config', 'task', 'backbone', 'params', 'FLOPs', 'input', 'target', 'weights',
           'reproduced')


@dataclass
class Entry:
    """What the page says about one config (paths relative to the repository root)."""

    config: str
    task: str
    backbone: str
    params: str
    flops: str
    input: str
    target: str
    source: str
    weights: list[tuple[str, str]] = field(default_factory=list)
    convert: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reproduced: str = REPRODUCED

    def row(self) -> dict[str, str]:
        """The table row, column name -> cell text."""
        name = osp.splitext(osp.basename(self.config))[0]
        weights = ', '.join(f'`{path}`' for _, path in self.weights) or 'none'
        return dict(zip(COLUMNS, (f'[{name}](../{self.config})', self.task, self.backbone,
                                  self.params, self.flops, self.input, self.target, weights,
                                  self.reproduced)))


def zoo_configs(root: str = REPO) -> list[str]:
    """Every config under ``root/configs`` but ``_base_``, relative to ``root``, sorted."""
    paths = glob.glob(osp.join(root, 'configs', '**', '*.py'), recursive=True)
    rel = sorted(osp.relpath(path, root) for path in paths)
    return [path for path in rel if '_base_' not in path.split(os.sep)]


def _split_outside_parens(text: str) -> tuple[str, str]:
    """(the published number, its source) of a Target text: split at the first ', ' or '. '
    outside parentheses that is not followed by another number (``46.3 mask AP, 51.7 box AP``
    stays whole)."""
    depth = 0
    for i, char in enumerate(text):
        depth += char == '('
        depth -= char == ')'
        if depth == 0 and text[i:i + 2] in (', ', '. ') and not text[i + 2:i + 3].isdigit():
            return text[:i], text[i + 2:].strip()
    return text.rstrip('.'), ''


def target(config: str) -> tuple[str, str]:
    """(published number, its source) from the config's ``# Target:`` header lines, which run
    to the first line ending in a full stop; ('', '') when the header names no target."""
    from .info import config_header
    header, lines = config_header(config), []
    for line in header:
        if lines or line.startswith('Target:'):
            lines.append(line)
            if line.endswith('.'):
                break
    if not lines:
        return '', ''
    text = ' '.join(lines)[len('Target:'):].strip()
    return _split_outside_parens(text)


def _without_weights(node: Any) -> Any:
    """A copy of a model config with every ``checkpoint`` / ``*_checkpoint`` key set to None:
    the zoo counts the architecture, whatever files are present."""
    if isinstance(node, dict):
        return {key: None if (key == 'checkpoint' or key.endswith('_checkpoint'))
                and isinstance(value, str) else _without_weights(value)
                for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_without_weights(item) for item in node)
    return node


def _model_dict(node: Any) -> dict:
    """A model config given as a dict or as the path of a config file (its ``model``)."""
    if isinstance(node, str):
        from mmengine.config import Config
        return Config.fromfile(node).model.to_dict()
    return dict(node)


def _describe_backbone(backbone: dict) -> str:
    kind = backbone.get('type', '?')
    detail = backbone.get('arch') or backbone.get('model_name')
    if isinstance(detail, dict):
        detail = 'custom'
    return f'{kind} {detail}' if detail else str(kind)


def describe(model: dict) -> tuple[str, str]:
    """(task, backbone) of a model config."""
    kind = model.get('type', '?')
    task = _TASKS.get(kind, kind)
    head = model.get('decode_head') or model.get('head') or {}
    if kind == 'Detector' and head.get('with_masks'):
        task = 'instance segmentation'
    if head.get('type'):
        task += f' ({head["type"]})'
    if 'backbone' in model:
        return task, _describe_backbone(model['backbone'])
    parts = [(role, _model_dict(model[role])) for role in ('detector', 'segmenter')
             if role in model]
    if parts:
        return task, ' + '.join(f'{_describe_backbone(part.get("backbone", {}))} ({role})'
                                for role, part in parts)
    return task, '-'


def _input_size(cfg) -> tuple[int, int]:
    """The config's input size (densevit info's), or its detector's for a model that wraps one
    (a PromptedInstanceSegmenter runs on the detector's preprocessed batch)."""
    from .info import input_size
    try:
        return input_size(cfg)[0]
    except CLIError:
        if 'detector' not in cfg.model:
            raise
        inner = cfg.copy()
        inner.model = _model_dict(cfg.model.detector)
        return input_size(inner)[0]


@contextlib.contextmanager
def _cwd(path: str):
    """Run in ``path``: configs name other files (``_base_`` aside) relative to the repository
    root, as the commands do when run from there."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def entry(config: str, root: str = REPO, flops: bool = True) -> Entry:
    """The zoo entry of ``config`` (relative to ``root``); FLOPs are counted only with ``flops``
    (the slow part: one traced forward at the config's input size), '?' without."""
    import torch

    import densevit.models  # noqa: F401  (registers the model types)
    from densevit.apis import load_config
    from densevit.registry import MODELS

    from .info import _count, converter_commands, count_flops, count_parameters, expected_weights
    with _cwd(root):
        cfg = load_config(config)
        task, backbone = describe(cfg.model.to_dict())
        with torch.no_grad():
            model = MODELS.build(_without_weights(cfg.model.to_dict())).eval()
        total, _ = count_parameters(model)
        size = _input_size(cfg)
        flops_text, notes = '?', []
        if flops and not hasattr(model, 'backbone'):
            flops_text = 'not counted'
            notes.append(f'FLOPs not counted: a {type(model).__name__} only predicts (no '
                         'tensor forward to trace); its parts have their own rows')
        elif flops:
            try:
                with torch.no_grad():  # the trace keeps no activations for a backward
                    count, _, what = count_flops(model, size)
                flops_text = _count(count) + ('' if what.startswith('one forward') else
                                              ' (backbone and neck)')
            except CLIError as error:  # the model does not trace: say so on the page
                reason = str(error).removeprefix('FLOPs could not be counted: ')
                flops_text = 'not counted'
                notes.append('FLOPs not counted: torch.jit.trace, which the counter runs, '
                             f'fails on this model ({reason})')
        del model
        published, source = target(config)
        return Entry(config=config.replace(os.sep, '/'), task=task, backbone=backbone,
                     params=_count(total), flops=flops_text, input=f'{size[0]}x{size[1]}',
                     target=published or 'none named in the config', source=source,
                     weights=expected_weights(cfg), convert=converter_commands(config),
                     notes=notes)


def _cell(text: str) -> str:
    return text.replace('|', '\\|')


def render(entries: Iterable[Entry]) -> str:
    """The page: what it is, the table, then each config's target source, weights and
    converter commands."""
    entries = list(entries)
    lines = [
        '# Model zoo',
        '',
        'Generated from `configs/` by `densevit zoo --out docs/model_zoo.md` (the same as '
        '`python tools/make_zoo.py`); do not edit by hand. `densevit zoo --check` fails, naming '
        'the rows, when this page and the configs disagree.',
        '',
        f'**Reproduced: {REPRODUCED}, for every config.** No config below has been trained or '
        'evaluated by densevit on the real COCO or ADE20K. The *target* column is the number the '
        'config aims at, as its header states it (with the source below); it is not a result of '
        'densevit. The quickstart configs have no published target: their numbers on the '
        'synthetic stand-in data are in their headers.',
        '',
        'Parameters and FLOPs are counted by `densevit info CONFIG` on the model the config '
        'builds: FLOPs for one image of the *input* size (the test pipeline\'s resize of a square '
        'image, padded as the data preprocessor pads), one forward without post-processing, one '
        'multiply-add = 1 FLOP (as fvcore and mmengine count). For SAM it is the image '
        'encoder\'s forward (the prompt decoder is cheap and runs per prompt).',
        '',
        '| ' + ' | '.join(COLUMNS) + ' |',
        '|' + '---|' * len(COLUMNS),
    ]
    for item in entries:
        lines.append('| ' + ' | '.join(_cell(v) for v in item.row().values()) + ' |')
    lines += ['', '## Targets, sources and weights', '']
    for item in entries:
        lines.append(f'### {item.config}')
        lines.append('')
        lines.append(f'- target: {item.target}' + (f'; source: {item.source}' if item.source
                                                     else ''))
        for key, path in item.weights:
            lines.append(f'- loads `{path}` (`{key}`)')
        for command in item.convert:
            lines.append(f'- convert: `{command}`')
        lines += [f'- {note}' for note in item.notes]
        lines.append(f'- reproduced by densevit: {item.reproduced}')
        lines.append('')
    return '\n'.join(lines)


def table_rows(page: str) -> dict[str, dict[str, str]]:
    """{config path: row (column -> cell)} of a page's table, read back from its markdown."""
    rows = {}
    for line in page.splitlines():
        match = re.match(r'\| \[[^\]]+\]\(\.\./([^)]+)\) \|', line)
        if match:
            cells = [cell.strip().replace('\\|', '|')
                     for cell in re.split(r'(?<!\\)\|', line.strip()[1:-1])]
            rows[match.group(1)] = dict(zip(COLUMNS, cells))
    return rows


def page_flops(page: str) -> dict[str, tuple[str, list[str]]]:
    """{config: (FLOPs cell, FLOPs notes)} as a page states them: what ``--no-flops`` keeps."""
    notes, current = {}, None
    for line in page.splitlines():
        if line.startswith('### '):
            current = line[4:]
        elif current and line.startswith('- FLOPs not counted:'):
            notes.setdefault(current, []).append(line[2:])
    return {config: (row['FLOPs'], notes.get(config, []))
            for config, row in table_rows(page).items()}


def stale_rows(old: str, new: str) -> list[str]:
    """The lines of ``new`` that ``old`` lacks and those of ``old`` that ``new`` lacks, marked
    '+' and '-' (a unified diff without its context)."""
    diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm='', n=0))
    return [line for line in diff[2:] if not line.startswith('@@')]  # [2:]: the file names


def main(argv: list[str] | None = None, prog: str | None = None) -> list[Entry]:
    parser = argparse.ArgumentParser(prog=prog, description='Write the model zoo page from the '
                                     'configs.',
                                     epilog=' '.join(__doc__.split('\n\n')[1].split()))
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help=f'page to write (default: {DEFAULT_OUT}, in the repository)')
    parser.add_argument('--check', action='store_true',
                        help='write nothing; exit 1 with the differing rows if --out is stale')
    parser.add_argument('--no-flops', action='store_true',
                        help='do not count FLOPs (the slow part): keep those --out has (with '
                             '--check: compare every other column)')
    args = parser.parse_args(argv)
    out = osp.join(REPO, DEFAULT_OUT) if args.out == DEFAULT_OUT else args.out
    old = None
    if osp.isfile(out):
        with open(out, encoding='utf-8') as f:
            old = f.read()
    elif args.check:
        raise CLIError(f'{out} does not exist: write it with densevit zoo --out {args.out}')
    kept = page_flops(old or '') if args.no_flops else {}
    configs = zoo_configs()
    entries = []
    for i, config in enumerate(configs, 1):
        if sys.stderr.isatty():
            print(f'[{i}/{len(configs)}] {config}', file=sys.stderr, flush=True)
        item = entry(config, flops=not args.no_flops)
        if args.no_flops:
            item.flops, item.notes = kept.get(item.config, ('?', []))
        entries.append(item)
    page = render(entries) + '\n'
    if args.check:
        diff = stale_rows(old, page)
        if diff:
            print('\n'.join(diff))
            raise CLIError(f'{out} is stale: {len(diff)} lines differ from what the configs '
                           'give (above); regenerate it with densevit zoo')
        print(f'{out} matches the configs ({len(entries)} configs)')
        return entries
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w', encoding='utf-8') as f:
        f.write(page)
    print(f'wrote {out} ({len(entries)} configs)')
    return entries
