"""Several processes (torchrun, gloo on CPU): 2 processes train the weights 1 process trains for
the same total batch; a COCO evaluation over an odd number of images scores every image exactly
once and gives the single-process numbers; a rank that dies brings the other down with an error
within a bound instead of leaving it waiting forever."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import mmengine
import pytest
import torch

from densevit.apis import load_config
from densevit.datasets.synthetic import make_coco
from densevit.engine import build_runner, enable_safe_resume

from ..conftest import ROOT, tool_env
from .tiny import write_config


def _tool(script: str, *args: str, port: int) -> subprocess.Popen:
    env = dict(tool_env(), PYTHON=sys.executable, PORT=str(port))
    return subprocess.Popen(['bash', osp.join(ROOT, 'tools', script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    log, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, log[-4000:]
    return log


# Deterministic tiny run: no random augmentation or drop path, plain SGD, and the cross-entropy
# divided by all pixels, so the mean over 2 processes' halves is the mean over the whole batch.
# Step 2's loss is NaN (on rank 1 only, with 2 processes) and skip_nonfinite is on.
_SAME_BATCH = """
model['backbone']['drop_path_rate'] = 0.0
model['decode_head'] = dict(loss_decode=dict(type='CrossEntropyLoss', avg_non_ignore=False))
train_dataloader['batch_size'] = {batch}
train_dataloader['dataset']['pipeline'] = [t for t in _train if t['type'] not in
                                           ('RandomFlip', 'PhotoMetricDistortion')]
optim_wrapper = dict(_delete_=True, type='OptimWrapper', skip_nonfinite=True,
                     optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
custom_hooks = custom_hooks + [dict(type='NanLossAt', step=1, rank={nan_rank})]
param_scheduler = []
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3, val_interval=100)
default_hooks['checkpoint']['interval'] = 3
"""


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(ade20k_root, tmp_path):
    """A ViT segmentor (LayerNorm only, no batch statistics): 2 gloo processes x 2 images reach,
    after 3 SGD steps, the weights of 1 process x 4 images (the infinite sampler deals the same 4
    images per step, split between the ranks). Step 2's loss is NaN on rank 1 alone: with
    skip_nonfinite both ranks skip it, as the single process skips its NaN step (a rank stepping
    alone would wait forever in DDP's all-reduce or end with other weights)."""
    configs = {name: write_config(tmp_path, name, ade20k_root, str(tmp_path / f'{name}.jsonl'),
                                  loop='iter',
                                  extra=_SAME_BATCH.format(batch=batch, nan_rank=nan_rank))
               for name, batch, nan_rank in (('one', 4, None), ('two', 2, 1))}
    two = _tool('dist_train.sh', configs['two'], '2', '--work-dir', str(tmp_path / 'two'),
                port=29631)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = build_runner(load_config(configs['one'], {'work_dir': str(tmp_path / 'one')}))
        one.train()
    finally:
        torch.set_num_threads(threads)
    log = _finish(two)
    assert 'Distributed training: True' in log, log[-2000:]
    assert one.message_hub.get_info('skipped_nonfinite') == 1
    assert 'optimizer step skipped' in log and 'skipped_nonfinite: 1' in log, log[-3000:]
    enable_safe_resume()
    a, b = (torch.load(tmp_path / n / 'iter_3.pth', map_location='cpu', weights_only=True)
            for n in ('one', 'two'))
    assert a['meta']['iter'] == b['meta']['iter'] == 3
    # Tolerance: DDP averages two half-batch gradients where one process takes one mean over the
    # batch; the two agree to float32 rounding (~1e-7 relative per sum), and three SGD steps with
    # momentum keep it there (measured: 6e-8 at most). 1e-5 leaves room for other BLAS builds
    # yet fails for any real difference (a batch split wrongly between the ranks moves weights
    # by ~1e-3).
    a, b = a['state_dict'], b['state_dict']
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.fixture(scope='module')
def coco_five(tmp_path_factory) -> str:
    """COCO stand-in with 5 training images (not a multiple of 2 processes), at 64 px."""
    return make_coco(str(tmp_path_factory.mktemp('coco5')), seed=1, num_train=5, num_val=1,
                     size=64) + '/'


@pytest.mark.slow
def test_coco_evaluation_over_an_odd_image_count_scores_each_image_once(coco_five, tmp_path):
    """5 images on 2 processes (3 + 2; the sampler pads rank 1 with a repeat that the evaluator
    must drop): the dumped predictions hold each image once and equal the single-process ones,
    and the COCO numbers are the single-process numbers exactly. The model is the quickstart
    DINO fitted briefly to these 5 images, so the numbers are not all 0 and an
    image scored twice or not at all would change them."""
    from tools.test import main as test_main

    from ..test_dino_quickstart import CONFIG, overfit_options
    options = overfit_options(coco_five, str(tmp_path / 'train'), iters=10)
    options.update({'train_dataloader.batch_size': 5, 'train_cfg.val_interval': 11})
    build_runner(load_config(CONFIG, options)).train()
    ckpt = str(tmp_path / 'train' / 'epoch_10.pth')
    args = ['--cfg-options', f'data_root={coco_five}',
            'test_dataloader.dataset.ann_file=annotations/instances_train2017.json',
            'test_dataloader.dataset.data_prefix.img=train2017/',
            f'test_evaluator.ann_file={coco_five}annotations/instances_train2017.json',
            'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    two = _tool('dist_test.sh', CONFIG, ckpt, '2', '--work-dir', str(tmp_path / 't2'),
                '--metrics-out', str(tmp_path / 'two.json'), '--out', str(tmp_path / 'two.pkl'),
                *args, port=29632)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses, so the float sums match bit for bit
    try:
        single = test_main([CONFIG, ckpt, '--work-dir', str(tmp_path / 't1'), '--out',
                            str(tmp_path / 'one.pkl'), *args])
    finally:
        torch.set_num_threads(threads)
    assert 'Distributed launcher: pytorch' in _finish(two)

    with open(f'{coco_five}annotations/instances_train2017.json') as f:
        image_ids = sorted(image['id'] for image in json.load(f)['images'])
    assert len(image_ids) == 5
    one_preds, two_preds = (mmengine.load(tmp_path / f'{n}.pkl') for n in ('one', 'two'))
    assert sorted(p['img_id'] for p in two_preds) == image_ids  # each image once, none missing
    by_id = {p['img_id']: p for p in one_preds}
    for pred in two_preds:
        ref = by_id[pred['img_id']]['pred_instances']
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(pred['pred_instances'][key], ref[key], rtol=0, atol=0)
    numbers = json.loads((tmp_path / 'two.json').read_text())
    assert numbers == {k: float(v) for k, v in single.items()}
    # after 10 steps on 64 px images the masks already score (segm AP50 ~0.01), boxes barely
    assert 0 < numbers['coco/segm_mAP_50'] < 1 and 0 < numbers['coco/segm_AR_100'] < 1, numbers


# The bound for the survivors: torchrun polls its workers every 0.1 s (--monitor-interval), and
# on a failure sends SIGTERM to the others and SIGKILL 30 s later to any still alive; so 60 s
# covers the worst case with room for a loaded machine (measured: about 1 s).
DEAD_RANK_BOUND = 60.0


@pytest.mark.slow
def test_a_dead_rank_brings_the_others_down_with_an_error(ade20k_root, tmp_path):
    """Rank 1 stops after step 2 and is SIGKILLed while rank 0 waits for it in step 3's gradient
    all-reduce: the run exits with an error naming the failed rank within DEAD_RANK_BOUND, and
    rank 0 is gone (it would otherwise wait for gloo's 30-minute timeout)."""
    record = str(tmp_path / 'steps.jsonl')
    config = write_config(tmp_path, 'dies', ade20k_root, record, loop='iter', block_after=1,
                          block_rank=1)
    proc = _tool('dist_train.sh', config, '2', '--work-dir', str(tmp_path / 'work'), port=29633)
    try:
        deadline = time.monotonic() + 180
        while not (osp.exists(record + '.rank1.blocked') and osp.exists(record + '.rank0') and
                   '"iter": 2' in open(record + '.rank0').read()):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, 'the ranks never reached the kill'
            time.sleep(0.2)
        time.sleep(1.0)  # rank 0 is now inside step 3, waiting for rank 1's gradients
        pids = [int(open(f'{record}.pid{rank}').read()) for rank in (0, 1)]
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        log, _ = proc.communicate(timeout=DEAD_RANK_BOUND + 60)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert took < DEAD_RANK_BOUND, f'the run took {took:.1f} s to stop after rank 1 died'
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # rank 0 no longer exists
    assert 'ChildFailedError' in log and 'Signal 9 (SIGKILL)' in log, log[-3000:]
    print(f'stopped {took:.1f} s after the kill')
