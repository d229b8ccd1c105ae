"""``SafeCheckpointHook``: mmengine's CheckpointHook with atomic files and a safe rotation order.

What mmengine 0.10.7's ``CheckpointHook`` lacks, and this subclass adds:

- Checkpoints are written through ``AtomicLocalBackend`` (temporary file, fsync, rename) unless the
  config names another backend; the ``last_checkpoint`` pointer is written the same way (mmengine
  opens it with ``'w'``, so a kill there leaves an empty pointer).
- Rotation: mmengine deletes the oldest kept checkpoint *before* writing the new one, so with
  ``max_keep_ckpts=1`` a kill or a full disk during the save leaves no checkpoint at all. Here the
  new checkpoint is written and the pointer moved first; only then is the oldest one deleted.
- A failed save is logged as one error line naming the file and the cause, then re-raised, which
  stops training at that step.
- Temporary files that a killed save left in the checkpoint folder are removed when training
  starts (they are complete or partial copies of a checkpoint that was never renamed into place).

``build_runner`` puts it in place of ``CheckpointHook`` (same arguments).
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import re

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from densevit.registry import HOOKS

from .atomic import atomic_write

__all__ = ['SafeCheckpointHook']

# what atomic_write names its temporary files, for checkpoints and the pointer
_STALE = re.compile(r'^\.(?:.+\.pth|last_checkpoint)\.[A-Za-z0-9_]+\.tmp$')


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """CheckpointHook whose checkpoints and pointer are written atomically (see module docstring).

    Takes exactly ``CheckpointHook``'s arguments; ``backend_args`` defaults to the atomic local
    backend when neither it nor ``file_client_args`` is given and ``out_dir`` is a local path.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        local = self.out_dir is None or '://' not in str(self.out_dir)
        if self.backend_args is None and self.file_client_args is None and local:
            self.backend_args = dict(backend='atomic_local')

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and self.backend_args == dict(backend='atomic_local'):
            for folder in {self.out_dir, runner.work_dir}:
                for stale in glob.glob(osp.join(folder, '.*.tmp')):
                    if not _STALE.match(osp.basename(stale)):
                        continue
                    os.remove(stale)
                    runner.logger.info(f'Removed {stale}, left by a save that was interrupted')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        try:
            runner.save_checkpoint(
                self.out_dir, filename, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta,
                by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
            if is_main_process():
                atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        except OSError as err:
            runner.logger.error(f'Saving the checkpoint failed, training stops: {err}')
            raise
        if outdated is not None and is_main_process():
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are folders
                self.file_backend.rmtree(path)
