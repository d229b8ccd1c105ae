"""``ResilientRunner``: mmengine's Runner with verified resume, exact resume state and
``skip_nonfinite``; ``build_runner`` builds every densevit run with it.

What it adds to mmengine 0.10.7's Runner:

- ``save_checkpoint`` gathers every rank's random states and the sampler geometry
  (``train_state.capture_train_state``) into ``meta['train_state']`` before the (rank-0) save. It is
  collective, as mmengine's CheckpointHook calls it on every rank.
- ``load_or_resume`` with ``resume=True`` and no file named checks that the newest checkpoint
  (``last_checkpoint``) loads, and falls back to the next older ``epoch_*.pth`` / ``iter_*.pth``
  with one warning line when it does not; it never resumes from a file it could not read, and
  fails naming every candidate when none loads. Then the random states and the sampler position
  are restored (``train_state.restore_train_state``) and the train loader gets its own generator.
- ``skip_nonfinite`` (popped from the optim wrapper config by ``build_runner``) is applied to the
  optim wrapper and turns the model's own non-finite check off (see ``nonfinite``).
"""
from __future__ import annotations

import glob
import os.path as osp
import re

import torch
from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.base_loop import BaseLoop

from densevit.checkpoint.reading import check_checkpoint_globals
from densevit.registry import RUNNERS

from .checkpoint import enable_safe_resume
from .nonfinite import skip_nonfinite_steps
from .train_state import capture_train_state, restore_train_state, seed_train_loader

__all__ = ['ResilientRunner', 'unreadable_reason']

_STEP_FILE = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def unreadable_reason(path: str) -> str | None:
    """Why ``path`` is not a loadable training checkpoint, or None if it is. Loads with
    ``weights_only=True`` (after densevit's own scan of the pickle's globals) and memory-mapped
    tensors, so the check reads little more than the
    pickle and the zip index (a truncated file has lost its index and fails here)."""
    if not osp.isfile(path):
        return 'no such file'
    enable_safe_resume()
    try:
        check_checkpoint_globals(path)  # densevit's own allowlist, whatever others added
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 -- every failure means "cannot resume from it"
        return f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'.strip()
    if not isinstance(checkpoint, dict) or not {'state_dict', 'meta'} <= set(checkpoint):
        return 'not a training checkpoint (no state_dict and meta)'
    return None


@RUNNERS.register_module()
class ResilientRunner(Runner):
    """mmengine's Runner plus verified, exact resume and ``skip_nonfinite`` (module docstring)."""

    skip_nonfinite: bool = False

    # ------------------------------------------------------------------ saving
    def save_checkpoint(self, out_dir: str, filename: str, file_client_args=None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True,
                        meta: dict | None = None, by_epoch: bool = True, backend_args=None):
        """mmengine's ``save_checkpoint`` plus ``meta['train_state']``; call it on every rank."""
        meta = dict(meta or {})
        if isinstance(self._train_loop, BaseLoop):
            meta['train_state'] = capture_train_state(self._train_loop.dataloader)
        if not is_main_process():
            return
        super().save_checkpoint(out_dir, filename, file_client_args,
                                save_optimizer=save_optimizer,
                                save_param_scheduler=save_param_scheduler, meta=meta,
                                by_epoch=by_epoch, backend_args=backend_args)

    # ------------------------------------------------------------------ loading
    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006 (mmengine's)
        checkpoint = super().load_checkpoint(filename, map_location, strict, revise_keys)
        self._loaded_meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
        return checkpoint

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        if self._resume and self._load_from is None:
            self._load_from = self._newest_readable_checkpoint()
            if self._load_from is None:
                self.logger.info(f'No checkpoint in {self.work_dir} to resume from; training '
                                 'starts from the beginning')
                self._resume = False
        resumed = bool(self._resume and self._load_from)
        if self._load_from and osp.isfile(self._load_from):
            # torch's weights-only allowlist is process-wide and other libraries extend it;
            # densevit's scan allows only what its own checkpoints need
            check_checkpoint_globals(self._load_from)
        super().load_or_resume()
        if isinstance(self._train_loop, BaseLoop):
            self._prepare_training(resumed)

    def _newest_readable_checkpoint(self) -> str | None:
        """The newest checkpoint of the work dir that loads: the pointer's target first, then the
        other ``epoch_N.pth`` / ``iter_N.pth`` beside it, newest first."""
        pointer = osp.join(self.work_dir, 'last_checkpoint')
        newest = None
        if osp.isfile(pointer):
            with open(pointer) as f:
                newest = f.read().strip() or None
        folder = osp.dirname(newest) if newest else self.work_dir
        others = [p for p in glob.glob(osp.join(folder, '*.pth'))
                  if _STEP_FILE.match(osp.basename(p)) and (
                      newest is None or not osp.exists(newest) or not osp.samefile(p, newest))]
        others.sort(key=lambda p: (osp.getmtime(p), int(_STEP_FILE.match(osp.basename(p))[2])),
                    reverse=True)
        candidates = ([newest] if newest else []) + others
        if not candidates:
            return None
        failures = []
        for path in candidates:
            reason = unreadable_reason(path)
            if reason is None:
                if failures:
                    self.logger.warning(
                        f'Checkpoint {failures[0][0]} cannot be read ({failures[0][1]}); resuming '
                        f'from the previous one, {path}'
                        + (f' ({len(failures) - 1} more unreadable)' if len(failures) > 1 else ''))
                return path
            failures.append((path, reason))
        raise RuntimeError(f'--resume: no checkpoint in {folder} can be read: '
                           + '; '.join(f'{p} ({r})' for p, r in failures))

    def _prepare_training(self, resumed: bool) -> None:
        loop = self._train_loop
        seed_train_loader(loop.dataloader, self.seed)
        if resumed:
            meta = getattr(self, '_loaded_meta', {})
            restore_train_state(loop, meta.get('train_state'), meta.get('epoch', 0),
                                meta.get('iter', 0))

    # ------------------------------------------------------------------ skip_nonfinite
    def build_optim_wrapper(self, optim_wrapper):
        optim_wrapper = super().build_optim_wrapper(optim_wrapper)
        if self.skip_nonfinite:
            model = self.model.module if is_model_wrapper(self.model) else self.model
            model.check_finite_loss = False  # the wrapper decides instead (see nonfinite.py)
            skip_nonfinite_steps(optim_wrapper)
        return optim_wrapper
