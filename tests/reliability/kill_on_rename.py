"""Imported by a test config in a ``tools/train.py`` subprocess: the process SIGKILLs itself when
an atomic write is about to rename its finished temporary file onto the name given by
``DENSEVIT_TEST_KILL_AT_RENAME`` (a base name such as ``iter_4.pth``): a kill between write and
rename, at the worst moment of a save."""
import os
import os.path as osp
import signal

import densevit.engine.atomic as atomic

_TARGET = os.environ.get('DENSEVIT_TEST_KILL_AT_RENAME')
_replace = os.replace


def _replace_or_die(src, dst):
    if osp.basename(dst) == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst)


if _TARGET:
    atomic.os.replace = _replace_or_die
