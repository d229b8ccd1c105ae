"""Train a quickstart config through the real Runner and time its training iterations, for the
segmentation and detection benchmark topics."""
from __future__ import annotations

import tempfile
import time

from mmengine.hooks import Hook


class TrainClock(Hook):
    """Counts training images and the seconds spent in training iterations only."""

    def __init__(self) -> None:
        self.images, self.seconds, self._start = 0, 0.0, 0.0

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seconds += time.perf_counter() - self._start
        self.images += len(data_batch['inputs'])


def train_and_validate(config: str, options: dict, after=None) -> dict:
    """Train ``config`` (with ``options``) in a temporary work dir, then validate it.

    ``after(runner, work_dir)``, if given, runs before the work dir goes and its dict joins the
    result. Returns the val metrics plus ``epochs``, ``train_images_per_s`` and ``train_minutes``.
    """
    from densevit.apis import load_config
    from densevit.engine import build_runner

    with tempfile.TemporaryDirectory() as work_dir:
        # mmengine reuses a visualizer by name: a new name per run, or the next run in this
        # process would write into this (deleted) work dir
        cfg = load_config(config, {'work_dir': work_dir, 'visualizer.name': work_dir,
                                   'default_hooks.checkpoint.interval': 10_000, **options})
        runner = build_runner(cfg)
        clock = TrainClock()
        runner.register_hook(clock)
        start = time.perf_counter()
        runner.train()
        total = time.perf_counter() - start
        result = dict(runner.val_loop.run())
        if after is not None:
            result.update(after(runner, work_dir))
    return dict(result, epochs=cfg.train_cfg.max_epochs,
                train_images_per_s=clock.images / clock.seconds, train_minutes=total / 60)
