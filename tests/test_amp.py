"""``--amp`` on CPU: one training step of every head family (UperNet, Segmenter, DINO with its
mask branch, SAM) through the real Runner with ``CPUAutocastOptimWrapper``, as
``tools/train.py --amp`` sets it when CUDA is absent. The layers run in bfloat16 (autocast is
active), the losses are finite, and the weights take a step."""
import math
import os.path as osp

import pytest
import torch
from torch import nn

from densevit.apis import load_config
from densevit.engine import build_runner

from .conftest import ROOT

pytestmark = pytest.mark.slow

CONFIGS = {
    'upernet': ('upernet_resnet18_ade20k.py', 'ade20k_root'),
    'segmenter': ('segmenter-linear_vit-tiny_ade20k.py', 'ade20k_root'),
    'dino': ('dino_vit-tiny_coco.py', 'coco_root'),
    'sam': ('sam_vit-tiny_coco.py', 'coco_root'),
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_one_amp_training_step_autocasts_and_gives_finite_losses(name, request, tmp_path):
    config, root = CONFIGS[name]
    cfg = load_config(osp.join(ROOT, 'configs', 'quickstart', config), {
        'data_root': request.getfixturevalue(root), 'work_dir': str(tmp_path),
        'train_dataloader.num_workers': 0, 'train_dataloader.persistent_workers': False,
        'train_dataloader.batch_size': 2, 'randomness': dict(seed=0)})
    cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'  # what --amp picks without CUDA
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=10)
    cfg.param_scheduler = []
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10)
    cfg.log_level = 'WARNING'
    runner = build_runner(cfg)

    dtypes: dict[str, set] = {}
    hooks = []
    for module_name, module in runner.model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hooks.append(module.register_forward_hook(
                lambda m, i, out, n=module_name: dtypes.setdefault(n, set()).add(out.dtype)))
    before = {k: v.detach().clone() for k, v in runner.model.named_parameters()}
    runner.train()
    for hook in hooks:
        hook.remove()

    # autocast was on: the backbone's and the head's matmuls gave bfloat16
    bf16 = {n for n, seen in dtypes.items() if torch.bfloat16 in seen}
    assert any(n.startswith('backbone.') for n in bf16), dtypes
    heads = {n for n in bf16 if not n.startswith('backbone.')}
    assert heads, dtypes
    if name == 'sam':
        assert any(n.startswith('mask_decoder.') for n in heads), heads
    # losses finite, weights stepped and still float32 (autocast casts activations only)
    losses = {k: v.current() for k, v in runner.message_hub.log_scalars.items()
              if k.startswith('train/') and 'loss' in k}
    assert 'train/loss' in losses and len(losses) > 1, losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    params = dict(runner.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    moved = [k for k, v in before.items() if not torch.equal(v, params[k])]
    assert any(k.startswith('backbone.') for k in moved)
