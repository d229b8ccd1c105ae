"""A progress bar with remaining time for the train, val and test loops, drawn on a terminal.

``build_runner`` adds it to every run as the default hook ``progress``; a config turns it off
the way it turns off any default hook of mmengine: ``default_hooks = dict(progress=None)`` (on
the command line ``--cfg-options +default_hooks.progress=None``).

Off a terminal (a log file, CI) the hook draws nothing: mmengine's ``LoggerHook`` already writes
a plain line every ``interval`` iterations with the remaining time, for training
(``eta`` to ``max_iters``) and for the val and test loops alike (``eta`` to the end of the loop,
from ``IterTimerHook``). Under torchrun only rank 0 draws.

Log lines and the bar share the terminal: before a record reaches one of the logger's console
handlers the bar's line is blanked, and the hook (priority ``VERY_LOW``, after ``LoggerHook``)
draws the bar again on the lines that follow.
"""
from __future__ import annotations

import logging
import sys

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop

from densevit.progress import Progress, is_terminal
from densevit.registry import HOOKS

__all__ = ['ProgressBarHook', 'add_progress_hook']

_STREAMS = ('stderr', 'stdout')


class _ClearBars(logging.Filter):
    """Blanks the hook's bars before a console handler writes a record (never drops one)."""

    def __init__(self, hook: ProgressBarHook) -> None:
        super().__init__()
        self.hook = hook

    def filter(self, record: logging.LogRecord) -> bool:
        for bar in self.hook.bars():
            bar.clear()
        return True


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """Draw the progress of training (iterations to ``max_iters``, with the epoch for
    epoch-based loops) and of each val and test loop as a bar with rate and remaining time.

    Args:
        stream: ``'stderr'`` (default) or ``'stdout'``; looked up when a loop starts, and drawn
            on only when it is a terminal.
    """

    priority = 'VERY_LOW'

    def __init__(self, stream: str = 'stderr') -> None:
        if stream not in _STREAMS:
            raise ValueError(f'ProgressBarHook stream must be one of {_STREAMS}, got {stream!r}')
        self.stream = stream
        self._train: Progress | None = None
        self._eval: Progress | None = None
        self._filter = _ClearBars(self)
        self._handlers: list[logging.Handler] = []

    def bars(self) -> list[Progress]:
        """The bars now open (the training bar and, during a val or test loop, its bar)."""
        return [bar for bar in (self._train, self._eval) if bar is not None]

    # ---------------------------------------------------------------------------- training

    def before_train(self, runner) -> None:
        stream = self._terminal()
        if stream is None:
            return
        self._train = Progress(runner.max_iters, self._train_desc(runner), stream=stream,
                               initial=runner.iter)
        self._watch_logger(runner)

    def before_train_epoch(self, runner) -> None:
        if self._train is not None:
            self._train.desc = self._train_desc(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._train is not None:
            self._train.update()

    def after_train(self, runner) -> None:
        if self._train is not None:
            self._train.close()
            self._train = None
        self._unwatch_logger()

    # -------------------------------------------------------------------------- val and test

    def before_val_epoch(self, runner) -> None:
        self._open_eval(runner, 'val', len(runner.val_dataloader))

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._step_eval()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._close_eval()

    def before_test_epoch(self, runner) -> None:
        self._open_eval(runner, 'test', len(runner.test_dataloader))

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._step_eval()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._close_eval()

    # ------------------------------------------------------------------------------ helpers

    def _terminal(self):
        """The stream to draw on: on rank 0, when it is a terminal; None otherwise."""
        stream = getattr(sys, self.stream)
        return stream if is_main_process() and is_terminal(stream) else None

    @staticmethod
    def _train_desc(runner) -> str:
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            return f'train epoch {runner.epoch + 1}/{runner.max_epochs}'
        return 'train'

    def _open_eval(self, runner, mode: str, total: int) -> None:
        stream = self._terminal()
        if stream is None:
            return
        if self._train is not None:  # validation during training: its bar takes the line
            self._train.clear()
        self._eval = Progress(total, mode, stream=stream)
        if self._train is None:  # a val or test run of its own
            self._watch_logger(runner)

    def _step_eval(self) -> None:
        if self._eval is None:
            return
        self._eval.update()
        if self._eval.n >= (self._eval.total or 0):
            # close now, so the bar's last state comes before LoggerHook's metrics line
            self._close_eval()

    def _close_eval(self) -> None:
        if self._eval is not None:
            self._eval.close()
            self._eval = None
            if self._train is None:
                self._unwatch_logger()

    def _watch_logger(self, runner) -> None:
        """Blank the bars before each record of the logger's console handlers (not its files)."""
        for handler in runner.logger.handlers:
            if (isinstance(handler, logging.StreamHandler)
                    and not isinstance(handler, logging.FileHandler)
                    and self._filter not in handler.filters):
                handler.addFilter(self._filter)
                self._handlers.append(handler)

    def _unwatch_logger(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        self._handlers = []


def add_progress_hook(cfg) -> None:
    """Add ``ProgressBarHook`` to ``cfg.default_hooks`` as ``progress`` unless the config names
    that hook itself; ``progress=None`` turns it off (removed here: mmengine accepts None only
    for its own default hooks)."""
    hooks = dict(cfg.get('default_hooks') or {})
    if 'progress' in hooks and hooks['progress'] is None:
        del hooks['progress']
    else:
        hooks.setdefault('progress', dict(type='ProgressBarHook'))
    cfg.default_hooks = hooks
