"""densevit's registries, children of mmengine's root registries.

A config with ``default_scope = 'densevit'`` lets an mmengine Runner build densevit modules by
type name: the root registry hands the lookup to these children, which import their
``locations`` lazily on first use. A third party registers its own modules in the same way (or
through a config's ``custom_imports``).

A misspelled config key must never be silently ignored: an unknown ``type`` lists the closest
registered names, and a class registered here refuses an unknown keyword argument with an error
naming the class and the closest keyword it accepts (see :func:`check_keywords`).
"""
import difflib
import functools
import inspect

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry as _MMEngineRegistry

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def unknown_keywords_message(owner: str, unknown, accepted) -> str:
    """'X got unknown keyword 'nmae' (closest accepted: name); it accepts a, b, ...'."""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(accepted), n=3, cutoff=0.5)
        parts.append(f'{key!r} (closest accepted: {", ".join(close)})' if close
                     else f'{key!r}')
    return (f'{owner} got unknown keyword{"s" if len(parts) > 1 else ""} {", ".join(parts)}; '
            f'it accepts {", ".join(accepted)}')


def accepted_keywords(cls: type):
    """The keyword names ``cls(...)`` accepts, or None when its ``__init__`` takes ``**kwargs``
    (or has no signature Python can read)."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in _NAMED)


def check_keywords(cls: type) -> None:
    """Make ``cls(**kwargs)`` raise a TypeError naming the class and the closest accepted keyword
    for any keyword its ``__init__`` does not take, instead of Python's bare message.

    Wraps ``cls.__init__`` in place (the class keeps its identity, and ``inspect.signature``
    still shows the original parameters). A class whose ``__init__`` takes ``**kwargs`` cannot be
    checked and is left alone; a subclass inheriting a checked ``__init__`` is checked by it.
    """
    init = cls.__init__
    if getattr(init, '_checks_keywords', False) and '__init__' not in cls.__dict__:
        return
    if getattr(cls.__dict__.get('__init__'), '_checks_keywords', False):
        return
    accepted = accepted_keywords(cls)
    if accepted is None:
        return
    allowed = frozenset(accepted)

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        unknown = [key for key in kwargs if key not in allowed]
        if unknown:
            raise TypeError(unknown_keywords_message(type(self).__name__, unknown, accepted))
        init(self, *args, **kwargs)

    checked_init._checks_keywords = True
    cls.__init__ = checked_init


class Registry(_MMEngineRegistry):
    """An mmengine Registry whose failed look-up names the closest registered types, and whose
    classes refuse unknown keyword arguments by name (:func:`check_keywords`).

    mmengine's ``get`` returns None for an unknown name and its builder then says only that the
    name is missing; here the error lists the registered names closest to the typo.
    """

    def get(self, key: str):
        obj = super().get(key)
        if obj is None and isinstance(key, str):
            names = sorted(self._names_in_reach())
            close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
            hint = f'closest: {", ".join(close)}' if close else f'registered: {", ".join(names)}'
            raise KeyError(f'{key!r} is not a registered {self.name} type ({hint})')
        return obj

    def _register_module(self, module, module_name=None, force: bool = False) -> None:
        super()._register_module(module, module_name, force)
        if inspect.isclass(module):
            check_keywords(module)

    def __contains__(self, key) -> bool:
        try:
            return self.get(key) is not None
        except KeyError:
            return False

    def _names_in_reach(self) -> set[str]:
        """Names this registry can build: its own and its parents' (after lazy imports)."""
        self.import_from_location()
        names, registry = set(), self
        while registry is not None:
            names.update(registry.module_dict)
            registry = registry.parent
        return names


MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['densevit.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, locations=['densevit.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, locations=['densevit.datasets'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS,
                         locations=['densevit.datasets'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, locations=['densevit.evaluation'])
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, locations=['densevit.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, locations=['densevit.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, locations=['densevit.engine'])
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, locations=['densevit.engine'])
OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, locations=['densevit.engine'])
OPTIM_WRAPPERS = Registry('optim wrapper', parent=MMENGINE_OPTIM_WRAPPERS,
                          locations=['densevit.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      locations=['densevit.engine'])
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS,
                            locations=['densevit.engine'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=MMENGINE_MODEL_WRAPPERS,
                          locations=['densevit.engine'])
LOG_PROCESSORS = Registry('log_processor', parent=MMENGINE_LOG_PROCESSORS,
                          locations=['densevit.engine'])
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, locations=['densevit.engine'])
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS, locations=['densevit.engine'])
