"""Inference shortcuts of the segmentation heads keep their outputs: BatchNorm folded into the
preceding convolution in eval mode (against torch's own ``fuse_conv_bn_weights`` and against the
unfolded torchvision block), and UperNet's bottleneck summed level by level instead of over the
concatenation (against the concatenating forward written out here); training runs the plain
blocks unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from densevit.models.contract import FeatureSpec
from densevit.models.heads.conv_norm import ConvNormAct, fold_batch_norm
from densevit.registry import MODELS

PYRAMID = {'s4': FeatureSpec(8, 4), 's8': FeatureSpec(12, 8), 's16': FeatureSpec(16, 16),
           's32': FeatureSpec(20, 32)}


def randomise_norms(module: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters away from their initial 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))


def plain(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The block as torchvision runs it: conv, then norm, then activation."""
    return nn.Sequential.forward(block, x)


def max_rel(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def test_fold_matches_torch_fusion_with_and_without_bias_or_affine():
    torch.manual_seed(0)
    for bias, affine in ((False, True), (True, True), (True, False)):
        conv, norm = nn.Conv2d(6, 5, 3, padding=1, bias=bias), nn.BatchNorm2d(5, affine=affine)
        randomise_norms(norm, seed=1)
        weight, shift = fold_batch_norm(conv, norm)
        expected_w, expected_b = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
            norm.weight if affine else torch.ones(5), norm.bias if affine else torch.zeros(5))
        torch.testing.assert_close(weight, expected_w)
        torch.testing.assert_close(shift, expected_b)


def test_fold_refuses_a_norm_without_running_statistics():
    norm = nn.BatchNorm2d(4, track_running_stats=False)
    try:
        fold_batch_norm(nn.Conv2d(3, 4, 1), norm)
    except ValueError as err:
        assert 'running statistics' in str(err)
    else:
        raise AssertionError('folding a norm without running statistics must fail')


def test_block_folds_in_eval_and_is_torchvision_in_training():
    torch.manual_seed(0)
    block = ConvNormAct(6, 8, 3)
    randomise_norms(block, seed=2)
    x = torch.randn(2, 6, 9, 11)
    block.eval()
    assert block._foldable()
    with torch.no_grad():
        assert max_rel(block(x), plain(block, x)) < 1e-5
    # the same keys as torchvision's block, so checkpoints and converters are untouched
    assert list(block.state_dict()) == [
        '0.weight', '1.weight', '1.bias', '1.running_mean', '1.running_var',
        '1.num_batches_tracked']
    block.train()
    assert not block._foldable()
    reference = ConvNormAct(6, 8, 3)
    reference.load_state_dict(block.state_dict())
    out, expected = block(x), plain(reference.train(), x)
    assert torch.equal(out, expected)  # the same kernels in the same order
    torch.testing.assert_close(block[1].running_mean, reference[1].running_mean)


def test_block_without_batch_norm_runs_unfolded():
    block = ConvNormAct(3, 4, 3, norm_layer=lambda c: nn.GroupNorm(2, c)).eval()
    assert not block._foldable()
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(block(x), plain(block, x))


def concatenating_upernet(head, features: dict) -> torch.Tensor:
    """UperNet's forward written out with unfolded blocks and the concatenated bottleneck."""
    def up(x, size):
        return F.interpolate(x, size=size, mode='bilinear', align_corners=False)

    inputs = [features[name] for name in head.in_features]
    deepest = inputs[-1]
    pooled = [deepest] + [up(plain(branch[1], branch[0](deepest)), deepest.shape[-2:])
                          for branch in head.ppm.branches]
    laterals = [plain(conv, x) for conv, x in zip(head.lateral_convs, inputs[:-1])]
    laterals.append(plain(head.ppm.bottleneck, torch.cat(pooled, dim=1)))
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + up(laterals[i], laterals[i - 1].shape[-2:])
    outs = [plain(conv, x) for conv, x in zip(head.fpn_convs, laterals[:-1])] + [laterals[-1]]
    size = outs[0].shape[-2:]
    fused = plain(head.fpn_bottleneck, torch.cat([outs[0]] + [up(x, size) for x in outs[1:]], 1))
    return head.conv_seg(fused)


def test_upernet_eval_equals_the_concatenating_unfolded_head():
    torch.manual_seed(0)
    head = MODELS.build(dict(type='UPerHead', num_classes=7, channels=16, dropout_ratio=0.0),
                        default_args=dict(input_shapes=PYRAMID))
    randomise_norms(head, seed=3)
    head.eval()
    g = torch.Generator().manual_seed(4)
    features = {name: torch.randn(2, spec.channels, 64 // spec.stride, 96 // spec.stride,
                                  generator=g) for name, spec in PYRAMID.items()}
    with torch.no_grad():
        got, expected = head(features), concatenating_upernet(head, features)
    assert got.shape == (2, 7, 16, 24)
    assert max_rel(got, expected) < 1e-4
    # gradients flow through the folded path to the norm parameters too (eval with grad)
    head(features).square().mean().backward()
    assert head.fpn_bottleneck[1].weight.grad.abs().sum() > 0


def test_upernet_and_fcn_training_unchanged():
    torch.manual_seed(0)
    head = MODELS.build(dict(type='UPerHead', num_classes=7, channels=16, dropout_ratio=0.0),
                        default_args=dict(input_shapes=PYRAMID))
    randomise_norms(head, seed=5)
    features = {name: torch.randn(2, spec.channels, 64 // spec.stride, 64 // spec.stride)
                for name, spec in PYRAMID.items()}
    reference = MODELS.build(dict(type='UPerHead', num_classes=7, channels=16,
                                  dropout_ratio=0.0), default_args=dict(input_shapes=PYRAMID))
    reference.load_state_dict(head.state_dict())
    assert torch.equal(head.train()(features), concatenating_upernet(reference.train(), features))
    fcn = MODELS.build(dict(type='FCNHead', num_classes=7, channels=8, num_convs=2,
                            concat_input=True, dropout_ratio=0.0),
                       default_args=dict(input_shapes=PYRAMID))
    randomise_norms(fcn, seed=6)
    x = features['s16']
    with torch.no_grad():
        fcn.eval()
        expected = fcn.conv_seg(plain(fcn.conv_cat, torch.cat(
            [x, plain(fcn.convs[1], plain(fcn.convs[0], x))], dim=1)))
        assert max_rel(fcn({'s16': x}), expected) < 1e-4
