"""Safe checkpoint saving and loading under torch >= 2.6.

torch >= 2.6 loads checkpoints with ``weights_only=True``; mmengine 0.10.7's resume state fails
that in two ways, both patched here and nowhere else:

1. Its message hub holds ``HistoryBuffer`` objects and numpy arrays/scalars ("Unsupported global:
   mmengine.logging.history_buffer.HistoryBuffer"): we allowlist exactly those classes.
2. ``HistoryBuffer.__getstate__`` pickles its class-level registry of statistics methods, which
   pickle as ``builtins.getattr(HistoryBuffer, 'min')``. Allowlisting ``getattr`` would let a
   crafted file reach any attribute of any allowed object, i.e. run code, so instead buffers are
   saved without that registry (it lives on the class and is rebuilt by ``__init__`` and by
   ``HistoryBuffer.register_statistics`` at import time).

Never fall back to full unpickling of a checkpoint.
"""
from __future__ import annotations

import torch
from mmengine.logging.history_buffer import HistoryBuffer

from densevit.checkpoint.reading import RESUME_GLOBALS

__all__ = ['RESUME_GLOBALS', 'enable_safe_resume']


def _history_buffer_state(self: HistoryBuffer) -> dict:
    """``HistoryBuffer`` state without the class-level statistics-method registry."""
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def enable_safe_resume() -> None:
    """Make mmengine's resume state save and load with ``weights_only=True`` (idempotent)."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    torch.serialization.add_safe_globals(RESUME_GLOBALS)
