"""End to end through the real mmengine Runner: training, evaluation, resume under torch >= 2.6
(weights_only loading), a 2-process torchrun run on CPU (gloo), and the published UperNet recipe
(SyncBN) giving on 2 processes the weights 1 process gives for the same total batch."""
import json
import os.path as osp
import subprocess
import sys

import mmengine
import numpy as np
import pytest
import torch
from PIL import Image

from densevit.apis import init_model, load_config
from densevit.engine import build_runner, enable_safe_resume

from .conftest import ROOT, tool_env

CONFIG = osp.join(ROOT, 'configs/quickstart/segmenter-linear_vit-tiny_ade20k.py')


def _tiny_options(data_root: str, work_dir: str, epochs: int) -> dict:
    """A deterministic tiny run: no random augmentation or dropout, so a resumed run must follow
    the straight run exactly (mmengine does not checkpoint data-pipeline RNG state)."""
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
                dict(type='Resize', scale=(64, 64), keep_ratio=False),
                dict(type='PackSegInputs')]
    return {
        'data_root': data_root,
        'work_dir': work_dir,
        'model.backbone.depth': 2,
        'model.backbone.pretrain_img_size': 64,
        'model.data_preprocessor.size': (64, 64),  # the training size of this pipeline
        'train_dataloader.batch_size': 4,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.pipeline': pipeline,
        'val_dataloader.num_workers': 0,
        'val_dataloader.persistent_workers': False,
        'test_dataloader.num_workers': 0,
        'test_dataloader.persistent_workers': False,
        'train_cfg.max_epochs': epochs,
        'train_cfg.val_interval': 100,
        'param_scheduler': [dict(type='PolyLR', power=1.0, by_epoch=True, begin=0, end=4,
                                 convert_to_iter_based=True)],
        'default_hooks.checkpoint.interval': 1,
        'default_hooks.checkpoint.max_keep_ckpts': 5,
        'default_hooks.logger.interval': 1,
    }


def _train(options: dict, **cfg_updates):
    cfg = load_config(CONFIG, options)
    for key, value in cfg_updates.items():
        cfg[key] = value
    runner = build_runner(cfg)
    runner.train()
    return runner


@pytest.mark.slow
def test_resume_equals_straight_training(ade20k_root, tmp_path):
    straight = _train(_tiny_options(ade20k_root, str(tmp_path / 'straight'), epochs=4))
    _train(_tiny_options(ade20k_root, str(tmp_path / 'resumed'), epochs=2))
    ckpt = str(tmp_path / 'resumed' / 'epoch_2.pth')
    # A real mmengine resume state loads with weights_only=True (the torch >= 2.6 default).
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert {'message_hub', 'optimizer', 'param_schedulers'} <= set(state)
    resumed = _train(_tiny_options(ade20k_root, str(tmp_path / 'resumed'), epochs=4),
                     resume=True, load_from=ckpt)
    assert resumed.iter == straight.iter == 12
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)

    # The checkpoint evaluates through tools/test.py and loads through init_model.
    metrics_file = tmp_path / 'metrics.json'
    from tools.test import main as test_main
    test_main([CONFIG, str(tmp_path / 'straight' / 'epoch_4.pth'), '--work-dir',
               str(tmp_path / 'test'), '--metrics-out', str(metrics_file), '--show-dir',
               str(tmp_path / 'vis'), '--out', str(tmp_path / 'preds.pkl'),
               '--cfg-options', f'data_root={ade20k_root}',
               'model.backbone.depth=2', 'model.backbone.pretrain_img_size=64',
               'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'])
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics) >= {'ade20k/mIoU', 'ade20k/mAcc', 'ade20k/aAcc'}
    assert len(list((tmp_path / 'vis').glob('*.png'))) == 4
    predictions = mmengine.load(tmp_path / 'preds.pkl')  # written by this test run
    assert len(predictions) == 4 and predictions[0]['pred_sem_seg']['data'].shape[0] == 1
    # The metrics, recomputed from the dumped predictions and the label PNGs read here (ADE20K:
    # 0 unlabeled, k -> class k - 1), with a confusion matrix in numpy: mmseg's definitions
    # (aAcc over labelled pixels; IoU and accuracy per class, NaN where undefined, then nanmean).
    confusion = np.zeros((150, 150), dtype=np.int64)  # (label, prediction)
    for record in predictions:
        label = np.asarray(Image.open(record['seg_map_path'])).astype(np.int64) - 1
        pred = record['pred_sem_seg']['data'][0].numpy().astype(np.int64)
        assert pred.shape == label.shape  # predictions come at the original size
        valid = label >= 0
        confusion += np.bincount(label[valid] * 150 + pred[valid],
                                 minlength=150 * 150).reshape(150, 150)
    hits, labelled, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    with np.errstate(invalid='ignore', divide='ignore'):
        expected = {'aAcc': hits.sum() / labelled.sum(),
                    'mIoU': np.nanmean(hits / (labelled + predicted - hits)),
                    'mAcc': np.nanmean(hits / labelled)}
    assert labelled.sum() > 0 and 0 < hits.sum() < labelled.sum()  # neither empty nor perfect
    for name, value in expected.items():
        assert metrics[f'ade20k/{name}'] == pytest.approx(100 * value, abs=0.006), name
    model = init_model(CONFIG, str(tmp_path / 'straight' / 'epoch_4.pth'),
                       cfg_options={'model.backbone.depth': 2,
                                    'model.backbone.pretrain_img_size': 64})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, a[key], rtol=0, atol=0)
    assert model.dataset_meta['classes'][0] == 'wall'


def test_untrusted_pickle_is_refused(tmp_path):
    """weights_only stays on: a checkpoint holding an arbitrary object does not load."""
    enable_safe_resume()
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': subprocess.Popen}, path)
    with pytest.raises(Exception, match='Unsupported global|weights_only'):
        init_model(CONFIG, str(path), cfg_options={'model.backbone.depth': 1})


def _run_tool(script: str, *args: str, port: int) -> str:
    env = tool_env()
    env.update(PYTHON=sys.executable, PORT=str(port))
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_dist_train_and_test_two_cpu_processes(ade20k_root, tmp_path):
    options = _tiny_options(ade20k_root, str(tmp_path / 'dist'), epochs=1)
    options['train_cfg.val_interval'] = 1
    args = [f'{k}={json.dumps(v) if not isinstance(v, str) else v}' for k, v in options.items()
            if k not in ('train_dataloader.dataset.pipeline', 'param_scheduler')]
    log = _run_tool('dist_train.sh', CONFIG, '2', '--cfg-options', *args, port=29617)
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log, \
        log[-2000:]
    # 12 images, batch 4 per process, 2 processes -> 2 iterations per epoch (DistributedSampler).
    ckpt = tmp_path / 'dist' / 'epoch_1.pth'
    enable_safe_resume()
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 2
    assert 'ade20k/mIoU' in log

    # Evaluating on two processes gives exactly the single-process numbers (the IoU metric sums
    # per-image histograms gathered from both ranks).
    test_args = ['--cfg-options', f'data_root={ade20k_root}', 'model.backbone.depth=2',
                 'model.backbone.pretrain_img_size=64', 'test_dataloader.num_workers=0',
                 'test_dataloader.persistent_workers=False']
    _run_tool('dist_test.sh', CONFIG, str(ckpt), '2', '--work-dir', str(tmp_path / 't2'),
              '--metrics-out', str(tmp_path / 'two.json'), *test_args, port=29618)
    from tools.test import main as test_main
    single = test_main([CONFIG, str(ckpt), '--work-dir', str(tmp_path / 't1'), *test_args])
    two = json.loads((tmp_path / 'two.json').read_text())
    assert two == pytest.approx({k: float(v) for k, v in single.items()}, abs=1e-9)


_SYNCBN_CONFIG = """
_base_ = {base!r}
# A tiny Swin UperNet with the published heads (SyncBN, cross-entropy over all pixels): no
# dropout, drop path or random augmentation, so two processes with half the batch each must
# follow one process with the whole batch.
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4,
                  drop_path_rate=0.0),
    decode_head=dict(channels=16, dropout_ratio=0.0),
    auxiliary_head=dict(channels=16, dropout_ratio=0.0),
    backbone_checkpoint=None)
_pipeline = [dict(type='LoadImageFromFile'),
             dict(type='LoadAnnotations', with_bbox=False, with_seg=True),
             dict(type='Resize', scale=(64, 48), keep_ratio=False),
             dict(type='PackSegInputs')]
train_dataloader = dict(batch_size={batch}, num_workers=0, persistent_workers=False,
                        sampler=dict(type='DefaultSampler', shuffle=False),
                        dataset=dict(pipeline=_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
# plain SGD: the updates are linear in the gradients, so float rounding stays at rounding size
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.05, momentum=0.9))
param_scheduler = []
train_cfg = dict(max_iters=3, val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=3), logger=dict(interval=1))
"""


@pytest.mark.slow
def test_syncbn_two_processes_train_the_weights_of_one(ade20k_root, tmp_path):
    """The Swin-T UperNet config's heads use SyncBN: 2 gloo processes x 2 images reach, after 3
    SGD steps, the weights (BatchNorm running statistics included) of 1 process x 4 images."""
    base = osp.join(ROOT, 'configs/upernet/upernet_swin-t_ade20k-512x512-160k.py')
    for name, batch in (('one', 4), ('two', 2)):
        (tmp_path / f'{name}.py').write_text(_SYNCBN_CONFIG.format(base=base, batch=batch))
    one = build_runner(load_config(str(tmp_path / 'one.py'),
                                   {'data_root': ade20k_root, 'work_dir': str(tmp_path / 'one')}))
    one.train()
    assert one.iter == 3
    log = _run_tool('dist_train.sh', str(tmp_path / 'two.py'), '2', '--work-dir',
                    str(tmp_path / 'two'), '--cfg-options', f'data_root={ade20k_root}',
                    port=29619)
    assert 'Distributed training: True' in log, log[-2000:]
    enable_safe_resume()
    a = torch.load(tmp_path / 'one' / 'iter_3.pth', map_location='cpu',
                   weights_only=True)['state_dict']
    b = torch.load(tmp_path / 'two' / 'iter_3.pth', map_location='cpu',
                   weights_only=True)['state_dict']
    assert a.keys() == b.keys()
    assert any('running_var' in k for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
