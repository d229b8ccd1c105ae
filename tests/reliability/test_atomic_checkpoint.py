"""Atomic checkpoints: a kill between writing a checkpoint (or the ``last_checkpoint`` pointer)
and renaming it into place leaves the previous checkpoint loadable and the pointer on a complete
file; ``--resume`` never picks an unreadable file, falls back to the previous checkpoint and says
so in one line."""
import glob
import os
import os.path as osp
import signal
import subprocess
import sys

import pytest
import torch

from densevit.apis import load_config
from densevit.engine import build_runner, enable_safe_resume
from densevit.engine.atomic import atomic_write
from densevit.engine.runner import unreadable_reason
from tools.train import main as train_main

from ..conftest import ROOT, tool_env
from .recorder import read_records
from .tiny import write_config


def _killed_before_rename(path: str, data: str) -> None:
    """In a forked child: atomic_write(path, data) that SIGKILLs itself just before renaming."""
    pid = os.fork()
    if pid == 0:  # child
        def die(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)
        import densevit.engine.atomic as atomic
        atomic.os.replace = die
        atomic_write(path, data)
        os._exit(0)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_pointer_killed_between_write_and_rename_keeps_the_old_one(tmp_path):
    pointer = tmp_path / 'last_checkpoint'
    atomic_write(pointer, str(tmp_path / 'iter_2.pth'))
    _killed_before_rename(str(pointer), str(tmp_path / 'iter_4.pth'))
    assert pointer.read_text() == str(tmp_path / 'iter_2.pth')
    # the new content was complete in the temporary file; only the rename was missing
    [leftover] = glob.glob(str(tmp_path / '.last_checkpoint.*.tmp'))
    assert open(leftover).read() == str(tmp_path / 'iter_4.pth')


@pytest.mark.slow
def test_kill_between_checkpoint_write_and_rename(ade20k_root, tmp_path):
    """A real training subprocess dies while renaming iter_4.pth into place: iter_2.pth and the
    pointer on it are intact, and ``--resume`` continues from it (removing the leftover)."""
    work = str(tmp_path / 'work')
    extra = ("custom_imports = dict(imports=['tests.reliability.recorder', "
             "'tests.reliability.kill_on_rename'], allow_failed_imports=False)\n")
    config = write_config(tmp_path, 'killed', ade20k_root, str(tmp_path / 'killed.jsonl'),
                          extra=extra)
    env = dict(tool_env(), DENSEVIT_TEST_KILL_AT_RENAME='iter_4.pth')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/train.py'), config,
                           '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=1'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
    assert not osp.exists(osp.join(work, 'iter_4.pth'))
    assert len(glob.glob(osp.join(work, '.iter_4.pth.*.tmp'))) == 1  # killed after the write
    with open(osp.join(work, 'last_checkpoint')) as f:
        pointed = f.read().strip()
    assert osp.basename(pointed) == 'iter_2.pth'
    assert unreadable_reason(pointed) is None
    enable_safe_resume()
    state = torch.load(pointed, map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 2
    assert all(torch.isfinite(v).all() for v in state['state_dict'].values())

    record = str(tmp_path / 'resumed.jsonl')
    train_main([write_config(tmp_path, 'resumed', ade20k_root, record), '--work-dir', work,
                '--resume', '--cfg-options', 'train_cfg.max_epochs=1'])
    steps = [r['iter'] for r in read_records(record) if 'iter' in r]
    assert steps == [2, 3, 4, 5]
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(work, '*.pth'))) == \
        ['iter_4.pth', 'iter_6.pth']
    assert glob.glob(osp.join(work, '.*.tmp')) == []


@pytest.mark.slow
def test_resume_falls_back_from_an_unreadable_newest_checkpoint(ade20k_root, tmp_path):
    """The newest checkpoint is truncated (as a non-atomic writer or a bad copy leaves it):
    ``--resume`` checks it, says so in one line and resumes from the previous one."""
    work = str(tmp_path / 'work')
    first = build_runner(load_config(
        write_config(tmp_path, 'first', ade20k_root, str(tmp_path / 'first.jsonl')),
        {'work_dir': work, 'train_cfg.max_epochs': 1}))
    first.train()
    newest = osp.join(work, 'iter_6.pth')
    with open(newest, 'rb') as f:
        data = f.read()
    with open(newest, 'wb') as f:
        f.write(data[:len(data) // 2])
    assert unreadable_reason(newest) is not None

    record = str(tmp_path / 'resumed.jsonl')
    runner = build_runner(load_config(write_config(tmp_path, 'resumed', ade20k_root, record),
                                      {'work_dir': work, 'resume': True}))
    runner.train()
    steps = [r['iter'] for r in read_records(record) if 'iter' in r]
    assert steps == list(range(4, 12))
    assert runner.iter == 12
    [log] = glob.glob(osp.join(runner.log_dir, '*.log'))
    with open(log) as f:
        lines = [line for line in f if 'cannot be read' in line]
    assert len(lines) == 1, lines
    assert f'Checkpoint {newest} cannot be read' in lines[0]
    assert f'resuming from the previous one, {osp.join(work, "iter_4.pth")}' in lines[0]


@pytest.mark.slow
def test_resume_with_no_readable_checkpoint_fails_naming_them(ade20k_root, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_2.pth').write_bytes(b'PK\x03\x04 not a whole zip')
    atomic_write(work / 'last_checkpoint', str(work / 'iter_2.pth'))
    runner = build_runner(load_config(
        write_config(tmp_path, 'broken', ade20k_root, str(tmp_path / 'r.jsonl')),
        {'work_dir': str(work), 'resume': True}))
    with pytest.raises(RuntimeError, match=r'no checkpoint in .* can be read: .*iter_2\.pth'):
        runner.train()
