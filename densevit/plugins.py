"""Outside plugins: packages that register their own backbones, necks, heads, datasets, ...

A package that registers modules in densevit's registries when imported declares the module in
the ``densevit.plugins`` entry point group of its own ``pyproject.toml``::

    [project.entry-points."densevit.plugins"]
    my_backbones = "my_package.backbones"

and densevit imports it before it reads any config (:func:`densevit.apis.load_config`, which
``densevit train / test / info ...``, ``tools/*.py`` and ``init_model`` all go through), so its
type names work in every config without a ``custom_imports`` line. Plugins are found the way
``importlib.metadata`` finds installed distributions: on ``sys.path``.
"""
from __future__ import annotations

import sys
from importlib import metadata

__all__ = ['GROUP', 'PluginError', 'load_plugins']

GROUP = 'densevit.plugins'

# entry point (name, value) -> imported object, and the sys.path they were searched on
_loaded: dict[tuple[str, str], object] = {}
_searched_path: tuple[str, ...] | None = None


class PluginError(ImportError):
    """An entry point of the ``densevit.plugins`` group failed to import."""


def _distribution(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, 'dist', None)
    return f'{dist.name} {dist.version}' if dist is not None else 'an unknown distribution'


def load_plugins() -> dict[str, str]:
    """Import every entry point of the ``densevit.plugins`` group once; returns
    ``{entry point name: its value}`` of all imported so far.

    The installed distributions are searched again only when ``sys.path`` has changed since the
    last search, so calling this before every config read costs nothing. An entry point that
    fails to import raises :class:`PluginError` naming the entry point, its module and its
    distribution (it is tried again on the next call).
    """
    global _searched_path
    path = tuple(sys.path)
    if path == _searched_path:
        return {name: value for name, value in _loaded}
    for entry_point in metadata.entry_points(group=GROUP):
        key = (entry_point.name, entry_point.value)
        if key in _loaded:
            continue
        try:
            _loaded[key] = entry_point.load()
        except Exception as exc:  # noqa: BLE001  (any failure of a plugin is reported as one)
            raise PluginError(
                f'densevit plugin {entry_point.name!r} (entry point group {GROUP!r} of '
                f'{_distribution(entry_point)}) failed to import its module '
                f'{entry_point.module!r}: {type(exc).__name__}: {exc}') from exc
    _searched_path = path
    return {name: value for name, value in _loaded}
