"""The non-finite loss check every task model runs before the optimizer step.

It lives at model level, not in the optim wrapper, because naming the bad batch needs the data
samples, which the wrapper never sees. The engine turns it off (``check_finite_loss = False`` on
the model) when ``optim_wrapper.skip_nonfinite`` makes the wrapper skip such steps instead (see
``densevit/engine/nonfinite.py``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from mmengine.logging import MessageHub

__all__ = ['check_finite_losses', 'describe_sample']


def describe_sample(sample) -> str:
    """'img_id 42 (path/to/000042.jpg)' or whatever of the two the sample's metainfo has."""
    meta = sample.metainfo
    parts = [f'img_id {meta["img_id"]}' if 'img_id' in meta else None,
             f'({meta["img_path"]})' if 'img_path' in meta else None]
    return ' '.join(p for p in parts if p) or '<no img_id or img_path>'


def check_finite_losses(losses: Mapping[str, torch.Tensor], data_samples: Sequence) -> None:
    """Raise FloatingPointError if a loss is NaN or inf, naming the iteration, every loss value
    and the batch's images, so a bad batch stops training before the optimizer step (and before
    a checkpoint with NaN weights can be written). Costs one device sync per step."""
    tensors = {name: [torch.as_tensor(t) for t in
                      (value if isinstance(value, (list, tuple)) else [value])]
               for name, value in losses.items()}
    flags = [torch.isfinite(t).all() for ts in tensors.values() for t in ts]
    if not flags or bool(torch.stack(flags).all()):
        return
    values = {name: [float(t.detach().float().sum()) for t in ts] for name, ts in tensors.items()}
    iteration = MessageHub.get_current_instance().get_info('iter')
    where = f'iteration {iteration}' if iteration is not None else 'an unknown iteration'
    terms = ', '.join(f'{name}={vs[0] if len(vs) == 1 else vs}' for name, vs in values.items())
    images = '; '.join(describe_sample(s) for s in data_samples)
    raise FloatingPointError(f'non-finite loss at {where}: {terms}; images: {images}')
