"""Saving fails loudly: a full disk or a read-only work dir while saving a checkpoint raises an
``OSError`` naming the checkpoint's path and the cause, and training stops at that step."""
import errno
import glob
import os
import os.path as osp
import shutil
import tempfile
import types

import pytest
from mmengine.hooks import Hook

import densevit.engine.atomic as atomic
from densevit.apis import load_config
from densevit.engine import build_runner
from densevit.engine.atomic import atomic_write

from .recorder import read_records
from .tiny import write_config


def _disk_full(monkeypatch) -> None:
    """Every fsync of the atomic writer fails as on a full disk (the recorder keeps its own)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic, 'os', types.SimpleNamespace(**{**vars(os), 'fsync': fsync}))


def test_atomic_write_disk_full_names_path_and_cause(tmp_path, monkeypatch):
    path = tmp_path / 'iter_2.pth'
    path.write_bytes(b'previous')
    _disk_full(monkeypatch)
    with pytest.raises(OSError) as info:
        atomic_write(path, b'new checkpoint')
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f'[Errno 28] cannot save {path}: No space left on device'
    assert path.read_bytes() == b'previous'
    assert os.listdir(tmp_path) == ['iter_2.pth']  # no temporary file left behind


def _runner(tmp_path, data_root: str, work_dir: str):
    record = str(tmp_path / 'steps.jsonl')
    cfg = load_config(write_config(tmp_path, 'tiny', data_root, record),
                      {'work_dir': work_dir, 'train_cfg.max_epochs': 1})
    return build_runner(cfg), record


@pytest.mark.slow
def test_disk_full_while_saving_stops_training(ade20k_root, tmp_path, monkeypatch):
    work = str(tmp_path / 'work')
    runner, record = _runner(tmp_path, ade20k_root, work)
    _disk_full(monkeypatch)
    with pytest.raises(OSError) as info:
        runner.train()
    path = osp.join(work, 'iter_2.pth')
    assert info.value.errno == errno.ENOSPC
    assert f'cannot save {path}: No space left on device' in str(info.value)
    # the first checkpoint is due after step 2; nothing ran after it
    assert [r['iter'] for r in read_records(record) if 'iter' in r] == [0, 1]
    assert runner.iter == 1
    assert glob.glob(osp.join(work, '*.pth')) == glob.glob(osp.join(work, '.*.tmp')) == []
    [log] = glob.glob(osp.join(runner.log_dir, '*.log'))
    with open(log) as f:
        assert f'Saving the checkpoint failed, training stops: [Errno 28] cannot save {path}' \
            in f.read()


class _ReadOnlyBeforeSave(Hook):
    """Makes the work dir read-only right before the first checkpoint is written. As root, the
    mode bits alone do not stop writes, so the process also takes an unprivileged effective uid
    until the test restores it."""

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        os.chmod(runner.work_dir, 0o555)
        if os.geteuid() == 0:
            os.seteuid(65534)  # nobody


@pytest.mark.slow
def test_read_only_work_dir_while_saving_stops_training(ade20k_root, tmp_path):
    # a folder others may traverse (pytest's tmp_path is private to root)
    work = tempfile.mkdtemp(prefix='densevit-ro-')
    os.chmod(work, 0o755)
    try:
        runner, record = _runner(tmp_path, ade20k_root, work)
        runner.register_hook(_ReadOnlyBeforeSave())
        try:
            with pytest.raises(OSError) as info:
                runner.train()
        finally:
            if os.geteuid() != os.getuid():
                os.seteuid(os.getuid())
            os.chmod(work, 0o755)
        path = osp.join(work, 'iter_2.pth')
        assert info.value.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
        assert f'cannot save {path}: ' in str(info.value)
        assert str(info.value).endswith(os.strerror(info.value.errno))
        assert [r['iter'] for r in read_records(record) if 'iter' in r] == [0, 1]
        assert glob.glob(osp.join(work, '*.pth')) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)
