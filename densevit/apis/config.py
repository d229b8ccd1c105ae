"""Reading configs: ``--cfg-options`` overrides, and one ``data_root`` that moves every path."""
from __future__ import annotations

from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['load_config', 'switch_data_root']


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


def load_config(config: str | Config, cfg_options: dict | None = None) -> Config:
    """Read ``config`` (a path or Config) and merge ``cfg_options`` into it.

    A ``data_root`` option switches every path that starts with the config's own ``data_root``
    (see :func:`switch_data_root`); the other options merge as mmengine's ``--cfg-options`` do.
    """
    cfg = Config.fromfile(config) if isinstance(config, str) else config.copy()
    options = dict(cfg_options or {})
    if 'data_root' in options:
        n = switch_data_root(cfg, str(options.pop('data_root')))
        print_log(f'data_root -> {cfg.data_root} ({n} paths switched)', logger='current')
    if options:
        cfg.merge_from_dict(options)
    return cfg
