"""The training engine on mmengine: safe checkpoint loading, CPU/GPU launch, layer-wise lr decay,
hooks. mmengine 0.10.7 predates torch 2.6; its known breaks are patched here and nowhere else."""
from . import hooks, optim  # noqa: F401  (registers modules)
from .checkpoint import enable_safe_resume
from .launch import build_runner, init_distributed

__all__ = ['enable_safe_resume', 'build_runner', 'init_distributed']
