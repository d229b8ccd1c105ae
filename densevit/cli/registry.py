"""``densevit list-models [PATTERN]``: what a config can name, grouped by kind.

Every type densevit registers (backbones with their size presets, necks, heads, task models,
datasets, transforms, metrics, and the engine's parts), filtered by a case-insensitive fnmatch
PATTERN; a pattern without wildcards matches any name containing it.
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import inspect
import sys

from . import CLIError

_PLURAL = {'loss / matcher': 'losses / matchers', 'engine': 'engine parts'}
# kinds in the order they are printed
KINDS = ('backbone', 'neck', 'head', 'task model', 'data preprocessor', 'loss / matcher',
         'dataset', 'transform', 'metric', 'hook', 'engine')


def _model_kind(name: str, cls: type) -> str:
    """The kind of a MODELS entry, from the package it is defined in."""
    module = cls.__module__
    if '.backbones' in module:
        return 'backbone'
    if '.necks' in module:
        return 'neck'
    if module.endswith(('.criterion', '.matcher', '.losses')):
        return 'loss / matcher'
    if '.heads' in module:
        return 'head'
    if name.endswith('DataPreprocessor'):
        return 'data preprocessor'
    if '.tasks' in module:
        return 'task model'
    return 'engine'


def arch_names(cls: type) -> list[str] | None:
    """The size presets of a class that takes ``arch``: its ``arch_settings`` table, or the one
    public ``*_ARCHS`` dict of its module; None for a class without presets."""
    try:
        if 'arch' not in inspect.signature(cls).parameters:
            return None
    except (TypeError, ValueError):
        return None
    table = getattr(cls, 'arch_settings', None)
    if table is None:
        module = sys.modules.get(cls.__module__)
        tables = [value for key, value in vars(module).items()
                  if key.endswith('_ARCHS') and not key.startswith('_') and isinstance(value, dict)]
        table = tables[0] if len(tables) == 1 else None
    return list(table) if table else None


def registered() -> dict[str, dict[str, type]]:
    """{kind: {registered name: class}} over densevit's own registries (not mmengine's)."""
    from densevit import registry as reg
    groups: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
    fixed = {'dataset': reg.DATASETS, 'transform': reg.TRANSFORMS, 'metric': reg.METRICS,
             'hook': reg.HOOKS}
    engine = (reg.DATA_SAMPLERS, reg.EVALUATOR, reg.LOOPS, reg.RUNNERS, reg.OPTIMIZERS,
              reg.OPTIM_WRAPPERS, reg.OPTIM_WRAPPER_CONSTRUCTORS, reg.PARAM_SCHEDULERS,
              reg.MODEL_WRAPPERS, reg.LOG_PROCESSORS, reg.VISUALIZERS, reg.VISBACKENDS)
    from densevit.plugins import load_plugins
    load_plugins()  # what installed plugins register is listed too
    reg.MODELS.import_from_location()
    for name, cls in reg.MODELS.module_dict.items():
        groups[_model_kind(name, cls)][name] = cls
    for kind, registry in fixed.items():
        registry.import_from_location()
        groups[kind].update(registry.module_dict)
    for registry in engine:
        registry.import_from_location()
        groups['engine'].update(registry.module_dict)
    return groups


def _summary(cls) -> str:
    doc = inspect.getdoc(cls) or ''
    return doc.split('\n\n')[0].replace('\n', ' ').replace('``', '').split('. ')[0].rstrip('.:')


def describe(name: str, cls) -> str:
    """What follows a name in the listing: size presets, or the first phrase of its docstring."""
    archs = arch_names(cls) if inspect.isclass(cls) else None
    if archs:
        return 'archs: ' + ', '.join(archs)
    if name == 'TimmBackbone':
        return 'model_name: any timm model (timm.list_models())'
    return _summary(cls)


def list_models(pattern: str | None = None) -> dict[str, dict[str, type]]:
    """The registered entries whose name matches ``pattern``, grouped by kind (empty kinds
    dropped). A CLIError names the pattern and the closest names when nothing matches."""
    groups = registered()
    if pattern:
        glob = pattern.lower() if any(c in pattern for c in '*?[') else f'*{pattern.lower()}*'
        groups = {kind: {n: c for n, c in entries.items() if fnmatch.fnmatchcase(n.lower(), glob)}
                  for kind, entries in groups.items()}
    groups = {kind: entries for kind, entries in groups.items() if entries}
    if not groups:
        names = [n for entries in registered().values() for n in entries]
        lower = {n.lower(): n for n in names}
        close = [lower[n] for n in difflib.get_close_matches(pattern.lower(), list(lower), n=3,
                                                              cutoff=0.4)]
        hint = f'closest: {", ".join(close)}' if close else 'densevit list-models shows all'
        raise CLIError(f'no registered name matches {pattern!r} ({hint})')
    return groups


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description='List the types a config can name (registered in densevit), '
        'by kind, with the size presets (archs) of each backbone.')
    parser.add_argument('pattern', nargs='?', metavar='PATTERN',
                        help="fnmatch pattern, case-insensitive, e.g. '*DETR' or 'Swin'; without "
                        'wildcards, any name containing it')
    args = parser.parse_args(argv)
    groups = list_models(args.pattern)
    width = max(len(n) for entries in groups.values() for n in entries)
    for kind, entries in groups.items():
        print(f'{_PLURAL.get(kind, kind + "s")} ({len(entries)})')
        for name in sorted(entries, key=str.lower):
            line = f'  {name:<{width}}  {describe(name, entries[name])}'
            print(line if len(line) <= 100 else line[:99].rsplit(' ', 1)[0] + ' …')
