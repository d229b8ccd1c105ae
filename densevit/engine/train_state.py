"""What an exact resume needs beyond weights, optimizer and schedulers: random states and the
position of the data sampler.

mmengine 0.10.7 saves the seed but none of the random generators' states, so a resumed run
re-seeds and draws different augmentations, dropout and drop-path masks from then on. It does not
save where the sampler stood either: an epoch-based run restarts the interrupted epoch from its
first batch (images seen twice), and an iteration-based run re-reads every consumed batch through
the whole data pipeline to skip them (slow, and it moves the random state again). Without a seed in
the config the samplers of a resumed run also shuffle with a new seed. This module fills those
gaps:

- ``capture_train_state`` records, per rank, Python's, numpy's, torch's (and CUDA's) generator
  states and the train loader's generator, plus the sampler's seed and the batch geometry; the
  runner stores it in ``checkpoint['meta']['train_state']`` (tensors, ints and lists only, so it
  loads with ``weights_only=True``).
- ``ResumableDefaultSampler`` / ``ResumableInfiniteSampler`` (mmengine's samplers plus
  ``resume(epoch, consumed)``) start part-way through an epoch; ``build_runner`` puts them in place
  of ``DefaultSampler`` / ``InfiniteSampler`` in the train loader.
- ``restore_train_state`` puts all of it back on resume, on every rank.
- ``ValRngIsolationHook`` keeps validation during training from moving the training random stream,
  so a run resumed after a validation draws what the uninterrupted run drew.

The train loader gets its own ``torch.Generator`` (``seed_train_loader``): a DataLoader otherwise
draws its worker base seed from the global generator each time an epoch starts, which would tie
the random stream to where the epoch boundaries fall relative to a checkpoint.

Exactness holds with ``num_workers=0``, and with workers when resuming at an epoch boundary.
Resuming mid-epoch with worker processes gives the same images in the same order, but the workers'
augmentation streams restart from their seeds (mmengine seeds each worker from a fixed number).
"""
from __future__ import annotations

import itertools
import logging
import random

import numpy as np
import torch
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from densevit.registry import DATA_SAMPLERS, HOOKS

__all__ = ['rng_state', 'set_rng_state', 'ResumableDefaultSampler', 'ResumableInfiniteSampler',
           'ValRngIsolationHook', 'seed_train_loader', 'capture_train_state',
           'restore_train_state']


# ------------------------------------------------------------------------- random states
def rng_state() -> dict:
    """The global random states of this process, as tensors, ints and tuples."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    return dict(python=random.getstate(),
                numpy=dict(key=torch.from_numpy(key.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), cached_gaussian=float(cached)),
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(state: dict) -> None:
    """Inverse of ``rng_state``."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    np_state = state['numpy']
    np.random.set_state(('MT19937', np_state['key'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


# ------------------------------------------------------------------------- samplers
@DATA_SAMPLERS.register_module()
class ResumableDefaultSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` that can start an epoch after its first ``consumed`` indices.

    Same arguments as ``DefaultSampler``; ``resume`` applies to the next iteration only.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resume_at: tuple[int, int] | None = None

    def resume(self, epoch: int, consumed: int) -> None:
        """Make the next iteration epoch ``epoch`` of the shuffle, starting after this rank's first
        ``consumed`` indices. The epoch is applied when iteration starts, after any ``set_epoch``
        a hook makes at the start of the loop."""
        self._resume_at = (epoch, consumed)

    def __iter__(self):
        start = 0
        if self._resume_at is not None:
            (self.epoch, start), self._resume_at = self._resume_at, None
        return itertools.islice(super().__iter__(), start, None)


@DATA_SAMPLERS.register_module()
class ResumableInfiniteSampler(InfiniteSampler):
    """mmengine's ``InfiniteSampler`` that can continue after this rank's first ``consumed``
    indices (the stream does not restart by epoch, so ``epoch`` is ignored)."""

    def resume(self, epoch: int, consumed: int) -> None:
        self.indices = self._indices_of_rank()  # a fresh stream from the (restored) seed
        for _ in itertools.islice(self.indices, consumed):
            pass


# ------------------------------------------------------------------------- hooks
@HOOKS.register_module()
class ValRngIsolationHook(Hook):
    """Validation leaves every global random state as it found it (so it cannot shift the
    training stream, and a resumed run that skips a validation draws the same numbers)."""

    priority = 'VERY_HIGH'

    def before_val(self, runner) -> None:
        self._state = rng_state()

    def after_val(self, runner) -> None:
        state, self._state = getattr(self, '_state', None), None
        if state is not None:
            set_rng_state(state)


# ------------------------------------------------------------------------- runner helpers
def seed_train_loader(loader, seed: int | None) -> None:
    """Give ``loader`` its own generator for its per-epoch base seed (see module docstring)."""
    generator = torch.Generator()
    generator.manual_seed(0 if seed is None else int(seed))
    loader.generator = generator


def capture_train_state(loader) -> dict | None:
    """This run's random states (one entry per rank) and sampler geometry. Collective: every
    rank must call it (the runner's ``save_checkpoint`` is called on every rank)."""
    rank, world_size = get_dist_info()
    local = dict(rng=rng_state(),
                 loader_generator=loader.generator.get_state() if loader.generator else None)
    states = all_gather_object(local) if world_size > 1 else [local]
    sampler = loader.sampler
    return dict(rng=[s['rng'] for s in states],
                loader_generator=[s['loader_generator'] for s in states],
                sampler=dict(seed=getattr(sampler, 'seed', None), batch_size=loader.batch_size,
                             world_size=world_size, iters_per_epoch=len(loader)))


class _SkipReplay:
    """mmengine 0.10.7's ``IterBasedTrainLoop`` re-reads every consumed batch on resume
    (``next()`` once per finished iteration). The sampler already starts after them, so those
    calls return nothing; then the loop gets the real iterator back."""

    def __init__(self, loop, iterator, calls: int) -> None:
        self._loop, self._iterator, self._calls = loop, iterator, calls

    def __iter__(self):
        return self

    def __next__(self):
        if self._calls > 0:
            self._calls -= 1
            if self._calls == 0:
                self._loop.dataloader_iterator = self._iterator
            return None
        return next(self._iterator)


def restore_train_state(loop, state: dict | None, epoch: int, iteration: int) -> None:
    """Put back what ``capture_train_state`` saved, for a run resumed at (``epoch``,
    ``iteration``) of the checkpoint's meta. Warns and leaves a part as it is when the run's
    geometry (batch size, processes, epoch length) differs from the saved one."""
    if state is None:
        print_log('The checkpoint holds no train_state (written by mmengine or an older densevit): '
                  'random states restart from the seed and the interrupted epoch restarts',
                  logger='current', level=logging.WARNING)
        return
    loader = loop.dataloader
    sampler = loader.sampler
    rank, world_size = get_dist_info()
    saved = state['sampler']
    now = dict(batch_size=loader.batch_size, world_size=world_size, iters_per_epoch=len(loader))
    changed = {k: (saved[k], v) for k, v in now.items() if saved[k] != v}
    if saved['seed'] is not None and hasattr(sampler, 'seed'):
        sampler.seed = saved['seed']
    if changed:
        print_log(f'The data geometry changed since the checkpoint ((saved, now): {changed}); '
                  'the sampler restarts the interrupted epoch and random states restart from '
                  'the seed', logger='current', level=logging.WARNING)
    elif not hasattr(sampler, 'resume'):
        print_log(f'{type(sampler).__name__} cannot start part-way through an epoch (use '
                  'DefaultSampler or InfiniteSampler, which build_runner makes resumable); the '
                  'interrupted epoch restarts', logger='current', level=logging.WARNING)
    else:
        batches = now['iters_per_epoch']
        if isinstance(loop, EpochBasedTrainLoop):
            data_epoch, done = epoch, iteration - epoch * batches
        elif isinstance(sampler, InfiniteSampler):
            data_epoch, done = 0, iteration
        else:
            data_epoch, done = divmod(iteration, batches)
        sampler.resume(data_epoch, done * loader.batch_size)
        if isinstance(loop, IterBasedTrainLoop):
            # a fresh iterator, so nothing prefetched before the resume is used
            iterator = type(loop.dataloader_iterator)(loader)
            iterator._epoch = data_epoch
            loop.dataloader_iterator = (_SkipReplay(loop, iterator, iteration) if iteration
                                        else iterator)
    if changed or len(state['rng']) != world_size:
        return
    if state['loader_generator'][rank] is not None and loader.generator is not None:
        loader.generator.set_state(state['loader_generator'][rank])
    set_rng_state(state['rng'][rank])
