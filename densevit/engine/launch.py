"""Build an mmengine Runner from a config, on one process or under torchrun, on CPU or GPU.

Every run is a ``ResilientRunner`` (verified, exact resume; ``skip_nonfinite``) whose checkpoints
are written atomically by ``SafeCheckpointHook`` and whose train sampler can resume part-way
through an epoch; ``make_resilient`` makes those swaps in the config, where they stay visible.

mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` unconditionally and its DDP
wrapper passes ``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU modules. On a machine without
CUDA we initialise the gloo process group ourselves before the Runner (which then skips its own
init) and configure the wrapper with ``device_ids=None``; with CUDA, mmengine's path is untouched.
That group is destroyed at exit while the interpreter is still whole: left to interpreter
finalisation, gloo's worker threads may still hold tensors and the process dies with SIGABRT
("terminate called without an active exception") after its work is done.
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.runner import Runner

from .checkpoint import enable_safe_resume
from .progress_hook import add_progress_hook
from .runner import ResilientRunner

__all__ = ['init_distributed', 'make_resilient', 'build_runner']

# mmengine types replaced by their densevit subclasses (same arguments, see their modules)
_RESUMABLE_SAMPLERS = {'DefaultSampler': 'ResumableDefaultSampler',
                       'InfiniteSampler': 'ResumableInfiniteSampler'}
_CHECKPOINT_HOOKS = ('CheckpointHook', 'mmengine.CheckpointHook')


def _destroy_process_group() -> None:
    if dist.is_initialized():
        try:  # every rank's queued gloo work finishes (and frees its tensors) before teardown
            dist.barrier()
        finally:
            dist.destroy_process_group()


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
        dist.init_process_group(backend='gloo', timeout=timedelta(seconds=timeout))
        atexit.register(_destroy_process_group)
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper


def make_resilient(cfg: Config) -> bool:
    """Edit ``cfg`` in place for safe checkpoints and exact resume: ``SafeCheckpointHook`` for
    mmengine's ``CheckpointHook``, resumable train samplers, ``ValRngIsolationHook``. Returns
    ``skip_nonfinite``, popped from the optim wrapper config (mmengine's wrappers do not take
    it)."""
    skip = False
    if isinstance(cfg.get('optim_wrapper'), dict):
        skip = bool(cfg.optim_wrapper.pop('skip_nonfinite', False))
    hooks = cfg.get('default_hooks')
    hooks = dict(hooks) if hooks is not None else {}
    checkpoint = hooks.get('checkpoint', dict(type='CheckpointHook', interval=1))
    if isinstance(checkpoint, dict) and checkpoint.get('type') in _CHECKPOINT_HOOKS:
        hooks['checkpoint'] = dict(checkpoint, type='SafeCheckpointHook')
    cfg.default_hooks = hooks
    loader = cfg.get('train_dataloader')
    if isinstance(loader, dict) and isinstance(loader.get('sampler'), dict):
        sampler = loader['sampler']
        kind = str(sampler.get('type')).split('.')[-1]
        if kind in _RESUMABLE_SAMPLERS:
            loader['sampler'] = dict(sampler, type=_RESUMABLE_SAMPLERS[kind])
    custom = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(h, dict) and h.get('type') == 'ValRngIsolationHook' for h in custom):
        cfg.custom_hooks = custom + [dict(type='ValRngIsolationHook')]
    return skip


def build_runner(cfg: Config, launcher: str = 'none') -> Runner:
    """A ``ResilientRunner`` for ``cfg``: allowlists the checkpoint globals a resume needs, sets up
    the process group for ``launcher``, fills in densevit's default scope and makes the run
    resilient (``make_resilient``); a terminal shows a progress bar (``default_hooks.progress``,
    see densevit/engine/progress_hook.py)."""
    enable_safe_resume()
    cfg.launcher = launcher
    cfg.setdefault('default_scope', 'densevit')
    init_distributed(cfg, launcher)
    skip_nonfinite = make_resilient(cfg)
    add_progress_hook(cfg)
    runner = ResilientRunner.from_cfg(cfg)
    runner.skip_nonfinite = skip_nonfinite
    return runner
