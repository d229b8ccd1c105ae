"""Test hooks: one writes what each training step saw and can stop a run in its tracks; one
makes a step's loss NaN.

Imported by the reliability tests' configs (``custom_imports``), in the test process and in
``tools/train.py`` subprocesses. It reads the batch only, never a random generator, so recording
does not change the run it records.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import time

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from densevit.registry import HOOKS


def _append(path: str, record: dict) -> None:
    with open(path, 'a') as f:  # one flushed line per event: survives a SIGKILL right after
        f.write(json.dumps(record) + '\n')
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@HOOKS.register_module()
class StepRecorder(Hook):
    """Appends, per training step, the iteration, the epoch, the image names of the batch and the
    sum of its (augmented) pixels; per validation, the metrics. With ``block_after`` it writes
    ``<path>.blocked`` after that iteration's step and sleeps until killed (only on rank
    ``block_rank`` when given; the others go on). Under several processes each rank records to
    ``<path>.rank<r>`` and writes its process id to ``<path>.pid<r>`` when training starts."""

    priority = 'VERY_LOW'

    def __init__(self, path: str, block_after: int | None = None,
                 block_rank: int | None = None) -> None:
        self.path, self.block_after, self.block_rank = path, block_after, block_rank

    def before_train(self, runner) -> None:
        if runner.world_size > 1:
            with open(f'{self.path}.pid{runner.rank}', 'w') as f:
                f.write(str(os.getpid()))
            self.path = f'{self.path}.rank{runner.rank}'

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        samples = data_batch['data_samples']
        _append(self.path, dict(
            iter=runner.iter, epoch=runner.epoch,
            images=[osp.basename(s.metainfo['img_path']) for s in samples],
            pixels=float(sum(float(x.double().sum()) for x in data_batch['inputs']))))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.block_after is not None and runner.iter == self.block_after and \
                self.block_rank in (None, runner.rank):
            with open(self.path + '.blocked', 'w') as f:
                f.write(str(runner.iter))
            while True:
                time.sleep(1)

    def after_val_epoch(self, runner, metrics=None) -> None:
        _append(self.path, dict(val_at=runner.iter,
                                metrics={k: float(v) for k, v in (metrics or {}).items()}))


@HOOKS.register_module()
class NanLossAt(Hook):
    """Makes the decode head's logits NaN in training step ``step`` (0-based), on rank ``rank``
    only when given (so the loss turns NaN on one process while the others stay finite)."""

    priority = 'HIGHEST'

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        head = model.decode_head
        head.__dict__.pop('forward', None)  # the class's forward again
        if runner.iter == self.step and self.rank in (None, runner.rank):
            forward = head.forward
            head.forward = lambda features: forward(features) * float('nan')
