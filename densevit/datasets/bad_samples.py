"""What a dataset does with a broken sample: ``on_bad_sample='raise'`` (default) or ``'skip'``.

A sample is bad when reading or transforming it raises ``OSError`` (missing, empty, truncated or
undecodable file) or ``ValueError`` (a label map of the wrong size or with values outside the
label space, an annotation that does not fit its image, ...); densevit's loaders raise those
with the file named. Other exceptions are bugs and always propagate.

Under ``'skip'`` in training, a bad sample is logged once (with its error), counted, and replaced
by another sample (mmengine's refetch of a random index), so batches keep their size; once more
than ``max_bad_fraction`` of the dataset has turned out bad, the run fails with the count and the
last error. Evaluation (``test_mode``) never skips: leaving an image out would change the score
without saying so, so the error is raised there under either policy.

Which samples were bad is kept in shared memory, so the data loader workers of one process (fork,
forkserver or spawn) log each bad file once and count together. Each distributed rank counts its
own samples against the whole dataset's budget.
"""
from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.context import get_spawning_popen
from typing import Optional

import numpy as np
from mmengine.logging import print_log

__all__ = ['BadSamplePolicy', 'BAD_SAMPLE_ERRORS', 'check_policy', 'too_many_bad']

BAD_SAMPLE_ERRORS = (OSError, ValueError)
_POLICIES = ('raise', 'skip')


def check_policy(owner: str, on_bad_sample: str, max_bad_fraction: float) -> None:
    """Raise a ValueError naming ``owner`` unless the policy and fraction are valid."""
    if on_bad_sample not in _POLICIES:
        raise ValueError(f'{owner} on_bad_sample must be one of {_POLICIES}, got '
                         f'{on_bad_sample!r}')
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f'{owner} max_bad_fraction must be in [0, 1], got {max_bad_fraction}')


def too_many_bad(num_bad: int, total: int, max_bad_fraction: float) -> bool:
    """Whether ``num_bad`` of ``total`` exceeds the allowed fraction."""
    return num_bad > max_bad_fraction * total


class _BadSampleLog:
    """Flags of the samples found bad, one byte per sample in shared memory; the count is their
    sum, so it is exact without a lock. Flagging is check-then-set without a lock (a lock made in
    one multiprocessing context cannot be sent to workers of another): two workers meeting the
    same new bad sample at the same instant may both log it, never count it twice.

    Shared with data loader workers by inheritance (fork) or while a worker is spawned; any other
    copy (``copy.deepcopy``, pickling to a file) gets a fresh, unshared log.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._flags = multiprocessing.RawArray('b', max(size, 1))  # zeros

    def add(self, index: int) -> bool:
        """Flag ``index``; True when it was not flagged before."""
        if self._flags[index]:
            return False
        self._flags[index] = 1
        return True

    def __contains__(self, index: int) -> bool:
        return bool(self._flags[index])

    @property
    def count(self) -> int:
        return int(np.frombuffer(self._flags, np.int8).sum())

    def __getstate__(self) -> dict:
        if get_spawning_popen() is not None:  # a worker being started: share the memory
            return dict(self.__dict__)
        return dict(size=self.size)

    def __setstate__(self, state: dict) -> None:
        if '_flags' in state:
            self.__dict__.update(state)
        else:
            self.__init__(state['size'])


class BadSamplePolicy:
    """Mixin for mmengine ``BaseDataset`` subclasses: the ``on_bad_sample`` policy above.

    Call :meth:`_set_bad_sample_policy` before ``BaseDataset.__init__``. ``num_bad_samples``
    counts the distinct bad samples met so far by this process and its data loader workers.
    """

    on_bad_sample: str = 'raise'
    max_bad_fraction: float = 0.0
    _bad_log: Optional[_BadSampleLog] = None

    def _set_bad_sample_policy(self, on_bad_sample: str, max_bad_fraction: float) -> None:
        check_policy(type(self).__name__, on_bad_sample, max_bad_fraction)
        self.on_bad_sample = on_bad_sample
        self.max_bad_fraction = float(max_bad_fraction)
        self._bad_log = None

    @property
    def num_bad_samples(self) -> int:
        return 0 if self._bad_log is None else self._bad_log.count

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        super().full_init()
        self._bad_log = _BadSampleLog(len(self))

    def _log(self) -> _BadSampleLog:
        if self._bad_log is None or self._bad_log.size != len(self):  # e.g. after get_subset
            self._bad_log = _BadSampleLog(len(self))
        return self._bad_log

    def prepare_data(self, idx: int):
        skipping = self.on_bad_sample == 'skip' and not self.test_mode
        if skipping and idx in self._log():
            return None  # known bad: mmengine's __getitem__ fetches another index
        try:
            return super().prepare_data(idx)
        except BAD_SAMPLE_ERRORS as error:
            if not skipping:
                raise
            self._record_bad(idx, error)
            return None

    def _record_bad(self, idx: int, error: Exception) -> None:
        log = self._log()
        if not log.add(idx):
            return
        total = len(self)
        path = self.get_data_info(idx).get('img_path')
        name = type(self).__name__
        if too_many_bad(log.count, total, self.max_bad_fraction):
            raise RuntimeError(f'{name}: {log.count} of {total} samples are bad, more than '
                               f'max_bad_fraction={self.max_bad_fraction}; the last one, sample '
                               f'{idx} ({path}): {error}') from error
        print_log(f'{name}: skipping bad sample {idx} ({path}): {error} [{log.count} of {total} '
                  f'bad so far; on_bad_sample="skip"]', logger='current', level=logging.WARNING)
