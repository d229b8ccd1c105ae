"""Reading official checkpoint files without unpickling arbitrary objects."""
from __future__ import annotations

import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

__all__ = ['read_state_dict', 'RESUME_GLOBALS']

# detectron2 model-zoo files (.pkl) are plain pickles of numpy arrays; these are the only
# globals they need.
_PKL_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('collections', 'OrderedDict'),
}


def _numpy_globals() -> list:
    # numpy arrays and scalars pickle through numpy's reconstruct helpers; their module moved from
    # numpy.core to numpy._core in numpy 2, so take them from the objects' own reduce tuples.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


# What a densevit training checkpoint holds besides tensors: mmengine's message hub buffers and
# numpy values (densevit.engine.checkpoint saves the buffers without their bound methods).
RESUME_GLOBALS = [HistoryBuffer, *_numpy_globals()]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PKL_GLOBALS:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name} from a checkpoint '
                                         '(only numpy arrays are allowed in .pkl files)')
        return super().find_class(module, name)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load the state dict inside an official checkpoint file.

    ``.pth``/``.pt``/``.bin`` files go through ``torch.load(weights_only=True)`` (with the few
    classes of a densevit training checkpoint allowed, ``RESUME_GLOBALS``); ``.pkl`` files
    (detectron2) through a numpy-only unpickler; ``.safetensors`` through safetensors. Wrapper
    keys ``model``, ``state_dict`` and ``module`` are unwrapped.
    """
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        obj = load_file(path)
    elif path.endswith('.pkl'):
        with open(path, 'rb') as f:
            obj = _NumpyOnlyUnpickler(f, encoding='latin1').load()
    else:
        with torch.serialization.safe_globals(RESUME_GLOBALS):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    for wrapper in ('model', 'state_dict', 'module'):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f'{path}: expected a state dict, found {type(obj).__name__}')
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in obj.items()
            if isinstance(v, (torch.Tensor, np.ndarray))}
