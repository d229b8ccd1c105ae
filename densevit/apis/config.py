"""Reading configs: ``--cfg-options`` overrides, and one ``data_root`` that moves every path.

Configs are Python files and are executed when read, like any code: use only configs from a
trusted source. Nothing else in densevit executes text read from a file.
"""
from __future__ import annotations

import ast
import difflib
import inspect
import os.path as osp
from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['load_config', 'switch_data_root', 'check_options', 'NEW_KEY_PREFIX']

NEW_KEY_PREFIX = '+'

# Top-level keys read by the Runner (besides its constructor's parameters) or by densevit's
# launcher, so an override may set them although the config does not.
_RUNNER_EXTRA_KEYS = ('model_wrapper_cfg', 'find_unused_parameters', 'compile')


def switch_data_root(cfg: Config, new_root: str) -> int:
    """Rewrite every string in ``cfg`` that starts with the config's ``data_root`` (dataset roots,
    the evaluator's annotation file, ...) to start with ``new_root``; returns how many changed.

    Configs compute paths as ``data_root + 'annotations/...'`` when they are read, so overriding
    the top-level ``data_root`` alone would leave those paths behind.
    """
    old_root = cfg.get('data_root')
    if old_root is None:
        raise KeyError(f'config {cfg.filename} has no top-level data_root to switch')
    if old_root.endswith('/') != new_root.endswith('/'):
        new_root = new_root.rstrip('/') + ('/' if old_root.endswith('/') else '')
    changed = 0

    def walk(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, str) and node.startswith(old_root):
            changed += 1
            return new_root + node[len(old_root):]
        if isinstance(node, dict):
            for key in list(node):
                node[key] = walk(node[key])
        elif isinstance(node, list):
            node[:] = [walk(item) for item in node]
        elif isinstance(node, tuple):
            return type(node)(walk(item) for item in node)
        return node

    for key in list(cfg.keys()):
        if key != 'data_root':
            cfg[key] = walk(cfg[key])
    cfg.data_root = new_root
    return changed


def _missing_base(config: str) -> tuple[str, str] | None:
    """(config file, missing ``_base_`` file) for the first ``_base_`` entry, in ``config`` or
    the bases it inherits, that names no file; None when all exist. Reads ``_base_`` with
    ``ast.literal_eval``, which evaluates nothing but literals."""
    seen, todo = set(), [osp.abspath(config)]
    while todo:
        path = todo.pop()
        if path in seen or not path.endswith('.py') or not osp.isfile(path):
            continue
        seen.add(path)
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), filename=path)
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id == '_base_'):
                try:
                    bases = ast.literal_eval(node.value)
                except ValueError:
                    continue
                for base in [bases] if isinstance(bases, str) else list(bases):
                    if '::' in base or '{{' in base:  # another package's file, or a variable
                        continue                        # mmengine substitutes: its own check
                    base_path = osp.normpath(osp.join(osp.dirname(path), base))
                    if not osp.isfile(base_path):
                        return path, base_path
                    todo.append(base_path)
    return None


def _read(config: str) -> Config:
    """``Config.fromfile``, with a missing config or ``_base_`` file named with its referrer."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config} does not exist')
    missing = _missing_base(config)
    if missing is not None:
        referrer, base = missing
        raise FileNotFoundError(f'config {referrer} names _base_ file {base}, which does not '
                                f'exist (_base_ paths are relative to the config\'s folder)')
    return Config.fromfile(config)


def _implicit_class(path: list[str], node: dict):
    """The class a typeless config dict at ``path`` is built into by the Runner, if known."""
    if len(path) != 1:
        return None
    key = path[0]
    if key.endswith('_dataloader'):
        from torch.utils.data import DataLoader
        return DataLoader
    from mmengine import runner
    if key == 'train_cfg':
        return runner.EpochBasedTrainLoop if node.get('by_epoch', True) else \
            runner.IterBasedTrainLoop
    return {'val_cfg': runner.ValLoop, 'test_cfg': runner.TestLoop}.get(key)


def _module_keywords(node: dict, path: list[str]) -> set[str] | None:
    """The keywords the module built from config dict ``node`` (found at ``path``) accepts: by
    its ``type`` (looked up in densevit's registries) or, for the Runner's typeless dicts, by the
    class the Runner builds; None when any keyword may do (a ``**kwargs`` constructor)."""
    from densevit import registry
    from densevit.registry import accepted_keywords
    kind = node.get('type')
    classes, keywords = [], set()
    if isinstance(kind, str):
        for reg in vars(registry).values():
            if isinstance(reg, registry.Registry):
                try:
                    cls = reg.get(kind)
                except KeyError:
                    continue
                if cls is not None:
                    classes.append(cls)
    elif inspect.isclass(kind):
        classes.append(kind)
    elif kind is None:
        implicit = _implicit_class(path, node)
        classes += [implicit] if implicit is not None else []
        if path == ['optim_wrapper']:
            from mmengine.optim import OptimWrapper
            classes.append(OptimWrapper)
            keywords |= {'constructor', 'paramwise_cfg'}  # read by the optimizer constructor
    for cls in classes:
        accepted = accepted_keywords(cls) if inspect.isclass(cls) else None
        if accepted is None:
            return None
        keywords.update(accepted)
    return keywords


def check_options(cfg: Config, options: dict) -> dict:
    """Check ``--cfg-options`` keys against ``cfg`` and return them ready for merging.

    A key (dotted, list items by index: ``param_scheduler.0.end``) must name something in the
    config, or a keyword that the module at that place accepts (its ``type``; the Runner's
    arguments at the top level), so a misspelling is an error naming the closest existing keys
    instead of a silently ignored setting. A key the user means as new is written with a leading
    ``+`` (``+model.backbone.extra=1``, as in Hydra); the ``+`` is dropped.
    """
    from mmengine.runner import Runner
    from densevit.registry import accepted_keywords
    top_level = set(accepted_keywords(Runner) or ()) | set(_RUNNER_EXTRA_KEYS)
    tree = cfg.to_dict()
    checked = {}
    for key, value in options.items():
        if key.startswith(NEW_KEY_PREFIX):
            checked[key[len(NEW_KEY_PREFIX):]] = value
            continue
        parts, node = key.split('.'), tree
        for depth, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            keywords = top_level if depth == 0 else (
                _module_keywords(node, parts[:depth]) if isinstance(node, dict) else set())
            if depth == len(parts) - 1 and isinstance(node, dict) and (
                    keywords is None or part in keywords):
                break  # a new leaf that the module there accepts
            where = '.'.join(parts[:depth]) or 'the top level'
            if isinstance(node, dict):
                names = sorted({str(k) for k in node} | set(keywords or ()))
                close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
                hint = f'closest: {", ".join(close)}' if close else \
                    f'it has {", ".join(map(str, node)) or "no keys"}'
            elif isinstance(node, (list, tuple)):
                hint = f'a list of {len(node)} items'
            else:
                hint = f'a value {node!r}, not a dict'
            raise KeyError(f'--cfg-options key {key!r} matches nothing in config {cfg.filename}: '
                           f'{where} has no {part!r} ({hint}). To add it as a new key, write '
                           f'{NEW_KEY_PREFIX}{key}=...')
        checked[key] = value
    return checked


def load_config(config: str | Config, cfg_options: dict | None = None) -> Config:
    """Read ``config`` (a path or Config) and merge ``cfg_options`` into it.

    A ``data_root`` option switches every path that starts with the config's own ``data_root``
    (see :func:`switch_data_root`); the other options are checked by :func:`check_options` (a
    key that matches nothing raises, unless written ``+key`` to add it) and merge as mmengine's
    ``--cfg-options`` do. A missing config or ``_base_`` file is named with the config naming it.
    Installed plugins (the ``densevit.plugins`` entry points) are imported first, so their type
    names are known to the config and to the option check.
    """
    from densevit.plugins import load_plugins
    load_plugins()
    cfg = _read(config) if isinstance(config, str) else config.copy()
    options = dict(cfg_options or {})
    if 'data_root' in options:
        n = switch_data_root(cfg, str(options.pop('data_root')))
        print_log(f'data_root -> {cfg.data_root} ({n} paths switched)', logger='current')
    if options:
        cfg.merge_from_dict(check_options(cfg, options))
    return cfg
