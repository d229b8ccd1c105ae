"""Converters from official checkpoints (pure ``state_dict -> state_dict`` functions) and a loader
that reports missing, unexpected and resized keys."""
from __future__ import annotations

from typing import Callable

from .loading import LoadReport, load_state_dict

__all__ = ['LoadReport', 'load_state_dict', 'converters', 'get_converter']


def converters() -> dict[str, Callable[[dict], dict]]:
    """Every converter by kind (``tools/convert_checkpoint.py KIND``), gathered from the model
    families' converter modules."""
    from . import detr, nat, resnet, swin, upernet, vit
    table: dict[str, Callable[[dict], dict]] = {}
    for module in (vit, swin, nat, resnet, detr, upernet):
        table.update(module.CONVERTERS)
    return table


def get_converter(kind: str) -> Callable[[dict], dict]:
    table = converters()
    if kind not in table:
        raise KeyError(f'no converter for {kind!r}; known kinds: {", ".join(sorted(table))}')
    return table[kind]
