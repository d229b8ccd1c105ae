"""``skip_nonfinite``: skip an optimizer step whose loss is NaN or inf instead of stopping.

By default a non-finite loss stops training: the task models raise ``FloatingPointError`` in
``loss()`` naming the iteration, the loss terms and the batch's image paths, before any backward
pass or optimizer step (so no checkpoint with NaN weights is written). With
``optim_wrapper=dict(..., skip_nonfinite=True)`` the runner turns that check off on the model and
wraps the optim wrapper's ``update_params``: a step whose loss is not finite runs no backward and no
optimizer step, is counted (``skipped_nonfinite`` in the training log and the message hub) and
logged with its iteration. Under several processes the decision is all-reduced first, so every
rank skips the same steps (a rank alone skipping would leave the others waiting in DDP's
gradient all-reduce). mmengine 0.10.7 has no such option.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from mmengine.logging import MessageHub, print_log
from mmengine.optim import OptimWrapper

__all__ = ['skip_nonfinite_steps']


def skip_nonfinite_steps(optim_wrapper: OptimWrapper) -> OptimWrapper:
    """Make ``optim_wrapper.update_params`` skip steps whose loss is not finite (idempotent)."""
    if getattr(optim_wrapper, 'skips_nonfinite', False):
        return optim_wrapper
    update = optim_wrapper.update_params

    def update_params(loss: torch.Tensor, step_kwargs=None, zero_kwargs=None) -> None:
        finite = torch.isfinite(loss.detach()).all().to(torch.int32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):
            return update(loss, step_kwargs, zero_kwargs)
        hub = MessageHub.get_current_instance()
        count = (hub.get_info('skipped_nonfinite') or 0) + 1
        hub.update_info('skipped_nonfinite', count)
        hub.update_scalar('train/skipped_nonfinite', count)
        print_log(f'non-finite loss ({float(loss.detach().float().sum())}) at iteration '
                  f'{hub.get_info("iter")}: optimizer step skipped (skip_nonfinite=True; '
                  f'{count} skipped so far)', logger='current', level=logging.WARNING)

    optim_wrapper.update_params = update_params
    optim_wrapper.skips_nonfinite = True
    return optim_wrapper
