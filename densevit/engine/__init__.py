"""The training engine on mmengine: safe checkpoint loading, CPU/GPU launch, layer-wise lr decay,
hooks, atomic checkpoints, exact resume and ``skip_nonfinite``. mmengine 0.10.7 predates torch
2.6; its known breaks and gaps are patched here and nowhere else."""
from . import atomic, checkpoint_hook, hooks, optim, train_state  # noqa: F401  (registers modules)
from .checkpoint import enable_safe_resume
from .launch import build_runner, init_distributed, make_resilient
from .runner import ResilientRunner

__all__ = ['enable_safe_resume', 'build_runner', 'init_distributed', 'make_resilient',
           'ResilientRunner']
