"""torch.compile of densevit's models: no graph break in any backbone (inference, and training
with activation checkpointing), every task model with its neck and head traced whole
(``fullgraph=True``) giving the eager outputs, one model through inductor (the default backend
and mode), and ``compile`` in a config compiling the Runner's training step.

Inductor generates and compiles C++ for every kernel, minutes for a model on two shared cores,
so it runs once here, on a DiNAT whose neighborhood attention is the opaque ``densevit::na2d_tiled``
operator; the other checks use the ``aot_eager`` backend, which runs everything that decides
whether a model compiles (Dynamo's capture, AOTAutograd's functionalised forward and backward
graphs) but runs the graphs with eager kernels.
"""
import os.path as osp
import warnings

import pytest
import torch

import densevit.models  # noqa: F401  (registers the modules)
from densevit.apis import load_config
from densevit.registry import MODELS

from .conftest import ROOT
from .test_backbone_contract import BACKBONES

pytestmark = pytest.mark.slow

CHECKED_BACKBONES = ('vit', 'vit-segmenter', 'swin', 'nat', 'dinat', 'timm-resnet18', 'timm-vit')
CHECKPOINTED = ('vit', 'swin', 'dinat')


def _config(name: str) -> dict:
    return load_config(osp.join(ROOT, 'configs', 'quickstart', name)).model


def _tiny_swin() -> dict:
    return dict(type='Swin', embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
                window_size=4, drop_path_rate=0.0)


def _tiny_dinat() -> dict:
    return dict(type='DiNAT', arch='mini', embed_dim=16, depths=(1, 2, 2, 1),
                num_heads=(1, 1, 2, 2), kernel_size=3, dilations=[[1], [1, 4], [1, 2], [1]],
                drop_path_rate=0.0)


def _criterion() -> dict:
    return dict(type='SetCriterion', weights=dict(cls=2.0, bbox=5.0, giou=2.0),
                matcher=dict(type='HungarianMatcher', cost_class=2.0, cost_bbox=5.0,
                             cost_giou=2.0))


# (model config, input side): every task model, neck and head family (TimmBackbone feeds the
# DETR models; UperNet on ResNet-18 is the Runner test's model)
TASK_MODELS = {
    'upernet-fcn-swin': (lambda: dict(
        type='Segmentor', backbone=_tiny_swin(),
        decode_head=dict(type='UPerHead', num_classes=5, channels=16),
        auxiliary_head=dict(type='FCNHead', num_classes=5, channels=8, in_features=('s16',))),
                         64),
    'fcn-dinat': (lambda: dict(
        type='Segmentor', backbone=_tiny_dinat(),
        decode_head=dict(type='FCNHead', num_classes=5, channels=8, in_features=('s8',))), 64),
    'segmenter-linear-quickstart': (lambda: _config('segmenter-linear_vit-tiny_ade20k.py'), 64),
    'segmenter-mask': (lambda: dict(
        type='Segmentor', backbone=dict(BACKBONES['vit-segmenter']),
        decode_head=dict(type='SegmenterMaskHead', num_classes=5, num_layers=1, num_heads=2,
                         in_features=('s16',))), 64),
    'dino-quickstart': (lambda: _config('dino_vit-tiny_coco.py'), 64),
    'deformable-detr-channel-mapper': (lambda: dict(
        type='Detector', backbone=dict(type='TimmBackbone', model_name='resnet18'),
        neck=dict(type='ChannelMapper', out_channels=32, in_features=('s8', 's16', 's32')),
        head=dict(type='DeformableDETR', in_features=('s8', 's16', 's32'), num_classes=5,
                  criterion=_criterion(), hidden_dim=32, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=2, ffn_dim=64, num_queries=10, enc_points=2,
                  dec_points=2, with_box_refine=True, two_stage=True)), 96),
    'detr': (lambda: dict(
        type='Detector', backbone=dict(type='TimmBackbone', model_name='resnet18'),
        head=dict(type='DETR', in_features=('s32',), num_classes=5, hidden_dim=32,
                  num_queries=10, num_heads=2, num_encoder_layers=1, num_decoder_layers=2,
                  ffn_dim=64, criterion=dict(_criterion(), class_loss='ce'))), 64),
    'sam-quickstart': (lambda: _config('sam_vit-tiny_coco.py'), 128),
}


def _flat(output) -> list[torch.Tensor]:
    """The tensors of a nested output, in a fixed order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _flat(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat(item)]
    return []


def _explain(model: torch.nn.Module, images: torch.Tensor):
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return torch._dynamo.explain(model)(images)


@pytest.mark.parametrize('with_rpb', [False, True])
def test_na2d_is_one_opaque_operator_under_compile(with_rpb):
    """Compiled whole (``fullgraph``) as ``densevit::na2d_tiled``, with the eager outputs and
    gradients; torch's ``opcheck`` passes on the operator (fake kernel, autograd registration)."""
    from densevit.ops import na2d
    from densevit.ops.neighborhood_attention import _na2d_op

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 11, 2, 8, generator=gen, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=gen, requires_grad=True) if with_rpb else None
    inputs = [q, k, v] + ([rpb] if with_rpb else [])
    grad = torch.randn(2, 9, 11, 2, 8, generator=gen)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *x: na2d(*x[:3], 3, 2, x[3] if with_rpb else None),
                             backend='aot_eager', fullgraph=True)
    eager_out = na2d(q, k, v, 3, 2, rpb)
    comp_out = compiled(*inputs)
    torch.testing.assert_close(comp_out, eager_out)
    for e, c in zip(torch.autograd.grad(eager_out, inputs, grad),
                    torch.autograd.grad(comp_out, inputs, grad)):
        torch.testing.assert_close(c, e)
    torch.library.opcheck(_na2d_op, ([t.detach() for t in (q, k, v)] + [[3, 3], [2, 2]]
                                     + [rpb.detach() if with_rpb else None]))


@pytest.mark.parametrize('name', CHECKED_BACKBONES)
def test_backbone_compiles_without_graph_breaks(name):
    torch.manual_seed(0)
    backbone = MODELS.build(BACKBONES[name]).eval()
    report = _explain(backbone, torch.randn(1, 3, 96, 80))
    assert report.graph_break_count == 0, [str(r.reason)[:200] for r in report.break_reasons]
    assert report.graph_count == 1


@pytest.mark.parametrize('name', CHECKPOINTED)
def test_checkpointed_training_compiles_whole_with_the_eager_gradients(name):
    torch.manual_seed(0)
    backbone = MODELS.build(dict(BACKBONES[name], with_cp=True, drop_path_rate=0.0)).train()
    images = torch.randn(1, 3, 64, 48)
    torch._dynamo.reset()
    compiled = torch.compile(backbone, backend='aot_eager', fullgraph=True)
    params = list(backbone.parameters())
    weights = {k: torch.randn(v.shape) for k, v in backbone(images).items()}
    grads = [torch.autograd.grad(sum((out[k] * weights[k]).sum() for k in out), params)
             for out in (backbone(images), compiled(images))]
    for eager, comp in zip(*grads):
        torch.testing.assert_close(comp, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', sorted(TASK_MODELS))
def test_task_model_compiles_whole_with_the_eager_outputs(name):
    make_cfg, side = TASK_MODELS[name]
    torch.manual_seed(0)
    model = MODELS.build(make_cfg()).eval()
    images = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        eager, comp = _flat(model(images)), _flat(compiled(images))
    assert len(comp) == len(eager) > 0
    for e, c in zip(eager, comp):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-4)


def test_inductor_default_mode_gives_the_eager_outputs_and_gradients():
    torch.manual_seed(0)
    backbone = MODELS.build(dict(_tiny_dinat(), depths=(1, 2), num_heads=(1, 2),
                                 dilations=[[1], [1, 3]], out_indices=(0, 1))).train()
    images = torch.randn(1, 3, 48, 40)
    torch._dynamo.reset()
    compiled = torch.compile(backbone)  # inductor, default mode
    params = list(backbone.parameters())
    results = []
    for model in (backbone, compiled):
        out = model(images)
        loss = sum((v * torch.linspace(-1, 1, v.numel()).view(v.shape)).sum()
                   for _, v in sorted(out.items()))
        results.append((_flat(out), torch.autograd.grad(loss, params)))
    (eager_out, eager_grads), (comp_out, comp_grads) = results
    for e, c in zip(eager_out + list(eager_grads), comp_out + list(comp_grads)):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-4)


def test_compile_in_the_config_compiles_the_runner_training_step(ade20k_root, tmp_path):
    """``compile`` (mmengine's Runner switch) reaches the model: the training step is a compiled
    function whose graphs hold the backbone, and the first step's loss is the eager one."""
    from torch._dynamo.utils import counters

    from densevit.engine import build_runner

    def first_loss(work_dir, **extra):
        cfg = load_config(osp.join(ROOT, 'configs/quickstart/upernet_resnet18_ade20k.py'), {
            'data_root': ade20k_root, 'work_dir': str(work_dir),
            'train_dataloader.num_workers': 0, 'train_dataloader.persistent_workers': False,
            'train_dataloader.batch_size': 2, 'randomness': dict(seed=0)})
        cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=10)
        cfg.param_scheduler = []
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
        cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10)
        cfg.log_level = 'WARNING'
        cfg.update(extra)
        runner = build_runner(cfg)
        runner.train()
        return runner, runner.message_hub.get_scalar('train/loss').current()

    _, eager = first_loss(tmp_path / 'eager')
    torch._dynamo.reset()
    counters.clear()
    runner, compiled = first_loss(tmp_path / 'compiled', compile=dict(backend='aot_eager'))
    assert hasattr(runner.model.train_step, '_torchdynamo_orig_callable')  # torch.compile's
    # the captured graphs hold the model's forward (ResNet-18 and UperNet: hundreds of calls)
    assert counters['stats']['calls_captured'] >= 100, dict(counters['stats'])
    assert compiled == pytest.approx(eager, rel=1e-4)
