"""kill -9, then ``--resume``: a real ``tools/train.py`` process is SIGKILLed mid-epoch after a
checkpoint; the resumed run ends with the weights, optimizer state, scheduler position, iteration
count and validation metrics of an uninterrupted run, and sees the same images in the same order
with the same augmentations (no image twice or skipped within an epoch).

The tiny run draws random flips, photometric distortions and drop-path masks, validates between
the checkpoint and the kill, and is checkpointed in the middle of an epoch, so a resume that lost a
random state or the sampler position would differ. One thread everywhere, so the killed
subprocess and the in-process runs do their float sums in the same order: equality is exact.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from densevit.engine import enable_safe_resume
from tools.train import main as train_main

from ..conftest import ROOT, tool_env
from .recorder import read_records
from .tiny import write_config


def _load(path: str) -> dict:
    enable_safe_resume()
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_same_tree(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tree(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


def _kill_and_resume(tmp_path, data_root: str, loop: str, block_after: int, last_saved: int,
                     final: int) -> None:
    rec_killed, rec_resumed, rec_straight = (str(tmp_path / f'{n}.jsonl')
                                             for n in ('killed', 'resumed', 'straight'))
    killed_cfg = write_config(tmp_path, 'killed', data_root, rec_killed, loop=loop,
                              block_after=block_after)
    work = str(tmp_path / 'work')
    proc = subprocess.Popen([sys.executable, osp.join(ROOT, 'tools/train.py'), killed_cfg,
                             '--work-dir', work], cwd=ROOT, env=tool_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # the uninterrupted reference runs meanwhile, in this process
        train_main([write_config(tmp_path, 'straight', data_root, rec_straight, loop=loop),
                    '--work-dir', str(tmp_path / 'straight')])
        deadline = time.monotonic() + 120
        while not osp.exists(rec_killed + '.blocked'):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, 'the training subprocess never reached the kill'
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        proc.stdout.close()
        with open(osp.join(work, 'last_checkpoint')) as f:
            assert osp.basename(f.read().strip()) == f'iter_{last_saved}.pth'

        train_main([write_config(tmp_path, 'resumed', data_root, rec_resumed, loop=loop),
                    '--work-dir', work, '--resume'])
    finally:
        torch.set_num_threads(threads)

    straight = _load(str(tmp_path / 'straight' / f'iter_{final}.pth'))
    resumed = _load(osp.join(work, f'iter_{final}.pth'))
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        _assert_same_tree(straight[key], resumed[key], key)
    for key in ('epoch', 'iter'):
        assert resumed['meta'][key] == straight['meta'][key], key
    assert resumed['meta']['iter'] == final

    # the data: the killed run's steps before the checkpoint, then the resumed run's, are the
    # uninterrupted run's steps (images, order and augmented pixels), and so are the validations
    def steps(records, first=0, stop=None):
        return [r for r in records if 'iter' in r and first <= r['iter'] < (stop or 10**9)]

    def vals(records, first=0):
        return [r for r in records if 'val_at' in r and r['val_at'] > first]

    killed, resumed_rec, ref = (read_records(p) for p in (rec_killed, rec_resumed, rec_straight))
    assert steps(killed, 0, last_saved) + steps(resumed_rec) == steps(ref)
    assert steps(resumed_rec)[0]['iter'] == last_saved
    assert vals(resumed_rec) == vals(ref, last_saved) and vals(ref, last_saved)
    return ref


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_epoch_loop(ade20k_root, tmp_path):
    """Epoch loop, 2 epochs x 6 steps, checkpoints every 2 steps (max 2 kept), validation after
    each epoch; killed after step 9 (the third of epoch 2), resumed from iter_8."""
    ref = _kill_and_resume(tmp_path, ade20k_root, 'epoch', block_after=8, last_saved=8, final=12)
    for epoch in (0, 1):  # every image exactly once per epoch
        images = [i for r in ref if r.get('epoch') == epoch and 'images' in r
                  for i in r['images']]
        assert sorted(images) == sorted(set(images)) and len(images) == 12


@pytest.mark.slow
def test_kill_then_resume_iteration_loop(ade20k_root, tmp_path):
    """Iteration loop with the infinite sampler, 9 steps (a pass over the 12 images is 6 steps),
    checkpoints every 3 steps, validation every 4; killed after step 5 (after a validation),
    resumed from iter_3."""
    ref = _kill_and_resume(tmp_path, ade20k_root, 'iter', block_after=4, last_saved=3, final=9)
    first_pass = [i for r in ref if 'images' in r and r['iter'] < 6 for i in r['images']]
    assert sorted(first_pass) == sorted(set(first_pass)) and len(first_pass) == 12
