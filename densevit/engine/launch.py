"""Build an mmengine Runner from a config, on one process or under torchrun, on CPU or GPU.

mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` unconditionally and its DDP
wrapper passes ``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU modules. On a machine without
CUDA we initialise the gloo process group ourselves before the Runner (which then skips its own
init) and configure the wrapper with ``device_ids=None``; with CUDA, mmengine's path is untouched.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.runner import Runner

from .checkpoint import enable_safe_resume

__all__ = ['init_distributed', 'build_runner']


def init_distributed(cfg: Config, launcher: str) -> None:
    """Prepare ``cfg`` (in place) and the process group for ``launcher`` ('none' or 'pytorch')."""
    if launcher == 'none':
        return
    if launcher != 'pytorch':
        raise ValueError(f"launcher {launcher!r} is not supported; use 'none' or 'pytorch' "
                         '(torchrun)')
    missing = [k for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE') if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher pytorch needs torchrun\'s environment; {missing} unset '
                           '(start with tools/dist_train.sh or torchrun)')
    if torch.cuda.is_available():
        return  # mmengine's own NCCL path
    if not dist.is_initialized():
        timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout', 1800)
        from datetime import timedelta
        dist.init_process_group(backend='gloo', timeout=timedelta(seconds=timeout))
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper


def build_runner(cfg: Config, launcher: str = 'none') -> Runner:
    """A Runner for ``cfg``: allowlists the checkpoint globals a resume needs, sets up the process
    group for ``launcher``, and fills in densevit's default scope."""
    enable_safe_resume()
    cfg.launcher = launcher
    cfg.setdefault('default_scope', 'densevit')
    init_distributed(cfg, launcher)
    return Runner.from_cfg(cfg)
