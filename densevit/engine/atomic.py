"""Atomic, durable, loudly failing file writes for checkpoints and the ``last_checkpoint`` pointer.

mmengine 0.10.7 writes a checkpoint with ``open(path, 'wb').write(...)`` straight onto its final
name, and the pointer the same way: a kill or a full disk during the write leaves a truncated file
under the name ``--resume`` trusts. Here every file is written to a temporary file in the same
folder, flushed and fsynced, then renamed over the final name (atomic on POSIX) and the folder is
fsynced, so a reader sees the old file or the new one, never a part. A failed write removes its
temporary file and raises ``OSError`` naming the final path and the cause.

``AtomicLocalBackend`` puts this under mmengine's file-backend interface (registered as
``'atomic_local'``); ``SafeCheckpointHook`` uses it for every checkpoint it saves.
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from pathlib import Path

from mmengine.fileio import LocalBackend, register_backend

__all__ = ['atomic_write', 'AtomicLocalBackend']

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    Raises:
        OSError: with the errno of the failure and a message naming ``path`` and the cause
            (e.g. "[Errno 28] cannot save work/iter_8.pth: No space left on device").
    """
    path = str(path)
    folder = osp.dirname(osp.abspath(path))
    if isinstance(data, str):
        data = data.encode('utf-8')
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; keep what open() would give
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(folder)
    except OSError as err:
        cause = err.strerror or str(err)
        raise OSError(err.errno, f'cannot save {path}: {cause}') from err
    finally:
        if tmp is not None and osp.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass  # the original error is the one to report


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (a crash right after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders
    finally:
        os.close(fd)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic ``put`` / ``put_text`` (see module docstring)."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        atomic_write(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj.encode(encoding))


register_backend('atomic_local', AtomicLocalBackend, force=True)
