"""NaN and inf: a non-finite loss stops training naming the iteration, the loss terms and the
batch's image paths, before any optimizer step, so no checkpoint holding NaN is written;
``optim_wrapper=dict(..., skip_nonfinite=True)`` skips such steps instead (no backward, no
optimizer step) and counts them in the log. For the Segmentor, the Detector and the
PromptableSegmenter."""
import glob
import os.path as osp
import uuid

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper

from densevit.apis import load_config
from densevit.engine import build_runner, enable_safe_resume
from densevit.engine.nonfinite import skip_nonfinite_steps
from densevit.registry import MODELS
from densevit.structures import DataSample, PixelData

from ..test_detector import _detector, _sample as _det_sample
from ..test_sam_training import _sample as _sam_sample, _squares, tiny_model as _sam_model
from .recorder import read_records
from .tiny import BASE, write_config

NAN = float('nan')


# ------------------------------------------------------------------ each task model, one step
def _segmentor():
    cfg = load_config(BASE).model
    cfg.data_preprocessor.size = (32, 32)
    cfg.backbone.update(depth=1, pretrain_img_size=32)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    forward = model.decode_head.forward
    model.decode_head.forward = lambda features: forward(features) * NAN
    sample = DataSample(metainfo=dict(img_path='images/a.jpg', img_shape=(32, 32),
                                      ori_shape=(32, 32)))
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, 32, 32)))
    return model, dict(inputs=[torch.zeros(3, 32, 32, dtype=torch.uint8)], data_samples=[sample])


def _detector_poisoned():
    model = _detector(head=dict(with_masks=False))
    model.head.poison = True
    samples = [_det_sample((32, 32), boxes=[[0, 0, 8, 8]], labels=[0], img_id=11,
                           img_path='images/a.jpg')]
    return model, dict(inputs=[torch.zeros(3, 32, 32, dtype=torch.uint8)], data_samples=samples)


def _promptable_segmenter():
    model = _sam_model()
    decode = model.decode

    def poisoned(*args, **kwargs):
        low_res, iou = decode(*args, **kwargs)
        return low_res * NAN, iou

    model.decode = poisoned
    sample = _sam_sample(_squares(2), img_id=5)
    sample.set_metainfo(dict(img_path='images/a.jpg'))
    return model, dict(inputs=[torch.zeros(3, 64, 64, dtype=torch.uint8)],
                       data_samples=[sample])


@pytest.mark.parametrize('build', [_segmentor, _detector_poisoned, _promptable_segmenter],
                         ids=['Segmentor', 'Detector', 'PromptableSegmenter'])
def test_each_task_model_stops_or_skips(build):
    model, data = build()
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    hub = MessageHub.get_instance(f'nonfinite_{uuid.uuid4().hex}')  # now the current hub
    try:
        hub.update_info('iter', 7)
        with pytest.raises(FloatingPointError) as info:
            model.train_step(data, optim)
        assert 'non-finite loss at iteration 7' in str(info.value)
        assert '=nan' in str(info.value) and 'images/a.jpg' in str(info.value)

        model.check_finite_loss = False  # what ResilientRunner does with skip_nonfinite
        skip_nonfinite_steps(optim)
        model.train_step(data, optim)
        model.train_step(data, optim)
        assert hub.get_info('skipped_nonfinite') == 2
        assert hub.get_scalar('train/skipped_nonfinite').current() == 2
    finally:
        MessageHub._instance_dict.pop(hub.instance_name, None)
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]), name
        assert value.grad is None or not value.grad.any(), name
    assert not optim.optimizer.state  # no step was ever taken


# ------------------------------------------------------------------ through the Runner
class _PoisonStep(Hook):
    """Makes the decode head's logits NaN in training step ``at`` (0-based), and snapshots the
    weights around that step."""

    def __init__(self, at: int) -> None:
        self.at, self.before, self.after = at, None, None

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        head = runner.model.decode_head
        head.forward = type(head).forward.__get__(head)  # the plain method again
        if runner.iter == self.at:
            self.before = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
            forward = head.forward
            head.forward = lambda features: forward(features) * NAN

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter == self.at:
            self.after = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def _run(tmp_path, data_root, extra: str = ''):
    record = str(tmp_path / 'steps.jsonl')
    cfg = load_config(write_config(tmp_path, 'tiny', data_root, record, extra=extra),
                      {'work_dir': str(tmp_path / 'work'), 'train_cfg.max_epochs': 1,
                       'train_cfg.val_interval': 10})
    runner = build_runner(cfg)
    poison = _PoisonStep(at=2)
    runner.register_hook(poison, priority='HIGHEST')
    return runner, poison, record


@pytest.mark.slow
def test_nan_loss_stops_training_naming_step_terms_and_images(ade20k_root, tmp_path):
    runner, _, record = _run(tmp_path, ade20k_root)
    with pytest.raises(FloatingPointError) as info:
        runner.train()
    steps = [r for r in read_records(record) if 'iter' in r]
    assert [r['iter'] for r in steps] == [0, 1, 2]
    message = str(info.value)
    assert message.startswith('non-finite loss at iteration 2: decode.loss_ce=nan')
    for image in steps[2]['images']:
        assert f'{image})' in message, (image, message)
    # the checkpoint after step 2 is the only one, and it is finite
    enable_safe_resume()
    [ckpt] = glob.glob(str(tmp_path / 'work' / '*.pth'))
    assert osp.basename(ckpt) == 'iter_2.pth'
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert all(torch.isfinite(v).all() for v in state['state_dict'].values())


@pytest.mark.slow
def test_skip_nonfinite_skips_the_step_and_counts_it(ade20k_root, tmp_path):
    runner, poison, _ = _run(tmp_path, ade20k_root,
                             extra='optim_wrapper = dict(skip_nonfinite=True)\n')
    runner.train()
    assert runner.iter == 6
    for key, value in poison.before.items():  # the poisoned step changed nothing
        assert torch.equal(poison.after[key], value), key
    # AdamW counted 5 steps, not 6
    steps = {int(s['step']) for s in runner.optim_wrapper.optimizer.state.values()}
    assert steps == {5}
    assert runner.message_hub.get_info('skipped_nonfinite') == 1
    assert all(torch.isfinite(v).all() for v in runner.model.state_dict().values())
    [log] = glob.glob(osp.join(runner.log_dir, '*.log'))
    with open(log) as f:
        text = f.read()
    assert 'non-finite loss (nan) at iteration 2: optimizer step skipped' in text
    assert 'skipped_nonfinite: 1' in text
