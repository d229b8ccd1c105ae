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

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

__all__ = ['RESUME_GLOBALS', 'enable_safe_resume']


def _numpy_globals() -> list:
    # numpy arrays and scalars pickle through numpy's reconstruct helpers; their module moved from
    # numpy.core to numpy._core in numpy 2, so take them from the objects' own reduce tuples.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


RESUME_GLOBALS = [HistoryBuffer, *_numpy_globals()]


def _history_buffer_state(self: HistoryBuffer) -> dict:
    """``HistoryBuffer`` state without the class-level statistics-method registry."""
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def enable_safe_resume() -> None:
    """Make mmengine's resume state save and load with ``weights_only=True`` (idempotent)."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    torch.serialization.add_safe_globals(RESUME_GLOBALS)
