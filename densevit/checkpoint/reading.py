"""Reading official checkpoint files without unpickling arbitrary objects.

Three guards, each refusing the file with an error naming it: a torch checkpoint may reference
(pickle GLOBAL) only torch's own weights-only allowlist and ``RESUME_GLOBALS``, checked before
anything is unpickled and whatever else the process has added with
``torch.serialization.add_safe_globals``; what it holds may contain no tensor subclass other
than ``nn.Parameter``; a ``.pkl`` file may hold only numpy arrays and plain containers.
"""
from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

__all__ = ['read_state_dict', 'check_checkpoint_globals', 'check_plain_tensors', 'RESUME_GLOBALS']

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


def _global_name(obj) -> str:
    return f'{obj.__module__}.{obj.__qualname__}'


def check_checkpoint_globals(path: str) -> None:
    """Refuse a ``torch.save`` (zip) checkpoint whose pickle names any global outside torch's
    weights-only allowlist and ``RESUME_GLOBALS``, or uses an opcode that the static scan does
    not know (both ``pickle.UnpicklingError`` naming the file). Legacy (non-zip) files are left
    to ``torch.load(weights_only=True)``.

    ``torch.load(weights_only=True)`` also allows what any imported library has added with
    ``add_safe_globals``; this scan allows only what densevit itself needs.
    """
    from torch import _weights_only_unpickler as weights_only
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
        if not pickles:
            raise pickle.UnpicklingError(f'{path}: not a torch checkpoint (no data.pkl inside)')
        data = archive.read(pickles[0])
    allowed = set(weights_only._get_allowed_globals()) | {_global_name(g) for g in RESUME_GLOBALS}
    try:
        names = weights_only.get_globals_in_pkl(io.BytesIO(data))
    except (pickle.UnpicklingError, EOFError) as e:
        raise pickle.UnpicklingError(f'refusing checkpoint {path}: its pickle uses an opcode '
                                     f'outside the weights-only subset ({e})') from None
    refused = sorted(names - allowed)
    if refused:
        raise pickle.UnpicklingError(f'refusing checkpoint {path}: it references {refused}, '
                                     f'outside the allowlist of weights (torch weights_only '
                                     f'and densevit RESUME_GLOBALS)')


def check_plain_tensors(obj, path: str, where: str = '') -> None:
    """Refuse (TypeError naming the file and key) any tensor in ``obj`` (nested dicts, lists,
    tuples) whose type is a subclass other than ``nn.Parameter``: a subclass runs its own code
    on every operation (``__torch_function__``)."""
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f'refusing checkpoint {path}: {where or "its content"} is a '
                            f'{_global_name(type(obj))}, a tensor subclass')
    elif isinstance(obj, dict):
        for key, value in obj.items():
            check_plain_tensors(value, path, f'{where}.{key}' if where else str(key))
    elif isinstance(obj, (list, tuple)):
        for k, value in enumerate(obj):
            check_plain_tensors(value, path, f'{where}[{k}]')


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str) -> None:
        super().__init__(file, encoding='latin1')
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _PKL_GLOBALS:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name} from checkpoint '
                                         f'{self.path} (only numpy arrays are allowed in .pkl '
                                         f'files)')
        return super().find_class(module, name)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load the state dict inside an official checkpoint file.

    ``.pth``/``.pt``/``.bin`` files go through ``torch.load(weights_only=True)`` (with the few
    classes of a densevit training checkpoint allowed, ``RESUME_GLOBALS``); ``.pkl`` files
    (detectron2) through a numpy-only unpickler; ``.safetensors`` through safetensors. A torch
    file referencing any other global, or holding a tensor subclass, is refused (see
    :func:`check_checkpoint_globals`, :func:`check_plain_tensors`). Wrapper
    keys ``model``, ``state_dict`` and ``module`` are unwrapped.
    """
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        obj = load_file(path)
    elif path.endswith('.pkl'):
        with open(path, 'rb') as f:
            obj = _NumpyOnlyUnpickler(f, path).load()
    else:
        check_checkpoint_globals(path)
        with torch.serialization.safe_globals(RESUME_GLOBALS):
            obj = torch.load(path, map_location='cpu', weights_only=True)
        check_plain_tensors(obj, path)
    for wrapper in ('model', 'state_dict', 'module'):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f'{path}: expected a state dict, found {type(obj).__name__}')
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in obj.items()
            if isinstance(v, (torch.Tensor, np.ndarray))}
