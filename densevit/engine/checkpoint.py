"""Safe checkpoint loading under torch >= 2.6.

torch >= 2.6 loads checkpoints with ``weights_only=True``; mmengine 0.10.7 saves a resume state
(message hub, numpy scalars in log buffers) that the restricted unpickler refuses ("Unsupported
global: mmengine.logging.history_buffer.HistoryBuffer"). We allowlist exactly the classes a
resume needs and never fall back to full unpickling.
"""
from __future__ import annotations

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

__all__ = ['RESUME_GLOBALS', 'allow_resume_globals']


def _numpy_globals() -> list:
    # numpy arrays and scalars pickle through numpy's reconstruct helpers; their module moved from
    # numpy.core to numpy._core in numpy 2, so take them from the array's own reduce tuple.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


RESUME_GLOBALS = [HistoryBuffer, *_numpy_globals()]


def allow_resume_globals() -> None:
    """Allowlist the classes found in an mmengine resume checkpoint (idempotent)."""
    torch.serialization.add_safe_globals(RESUME_GLOBALS)
