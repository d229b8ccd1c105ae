"""Segmentation heads and losses: the head contract on stand-in backbones (shapes, training signal,
gradients everywhere), hand-checked losses, OHEM, and the Segmenter mask transformer's cosine
similarities."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densevit.models.contract import FeatureSpec
from densevit.models.losses import (CrossEntropyLoss, DiceLoss, OHEMPixelSampler, SegCriterion,
                                    accuracy, upsampled_cross_entropy)
from densevit.registry import MODELS
from densevit.structures import DataSample, PixelData

NUM_CLASSES = 5
PYRAMID = {'s4': FeatureSpec(8, 4), 's8': FeatureSpec(12, 8), 's16': FeatureSpec(16, 16),
           's32': FeatureSpec(20, 32)}
PLAIN = {'s16': FeatureSpec(32, 16)}


class StandInBackbone(nn.Module):
    """A few strided convs declaring s4..s32 (or a single patchify conv for 's16' only)."""

    def __init__(self, specs: dict[str, FeatureSpec]) -> None:
        super().__init__()
        self.out_features = specs
        self.convs = nn.ModuleDict()
        in_ch, stride = 3, 1
        for name, spec in specs.items():
            factor = spec.stride // stride
            self.convs[name] = nn.Conv2d(in_ch, spec.channels, factor, factor)
            in_ch, stride = spec.channels, spec.stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, conv in self.convs.items():
            x = conv(x)
            out[name] = x
        return out


def _samples(gt: torch.Tensor) -> list[DataSample]:
    out = []
    for g in gt:
        s = DataSample(metainfo=dict(img_shape=tuple(g.shape), ori_shape=tuple(g.shape)))
        s.gt_sem_seg = PixelData(data=g[None])
        out.append(s)
    return out


HEAD_CASES = [
    # (head config, backbone specs, expected logits stride)
    (dict(type='UPerHead', channels=16), PYRAMID, 4),
    (dict(type='UPerHead', channels=16, in_features=('s16',)), PLAIN, 16),
    (dict(type='FCNHead', channels=8, in_features=('s16',)), PYRAMID, 16),
    (dict(type='FCNHead', channels=8, in_features=('s16',), num_convs=2, concat_input=True),
     PLAIN, 16),
    (dict(type='SegmenterLinearHead'), PLAIN, 16),
    (dict(type='SegmenterLinearHead', in_features=('s32',)), PYRAMID, 32),
    (dict(type='SegmenterMaskHead', num_heads=2), PLAIN, 16),
    (dict(type='SegmenterMaskHead', in_features=('s32',), channels=16, num_heads=2,
          drop_path_rate=0.1), PYRAMID, 32),
]


@pytest.mark.parametrize('head_cfg,specs,stride', HEAD_CASES,
                         ids=[f"{c['type']}-{'plain' if s is PLAIN else 'pyramid'}"
                              for c, s, _ in HEAD_CASES])
def test_head_contract(head_cfg, specs, stride):
    torch.manual_seed(0)
    backbone = StandInBackbone(specs)
    head = MODELS.build(dict(head_cfg, num_classes=NUM_CLASSES, input_shapes=specs))
    # constant on 32x32 blocks, so even a stride-32 head can fit labels derived from it
    images = F.interpolate(torch.randn(2, 3, 2, 2), scale_factor=32.0, mode='nearest')
    logits = head(backbone(images))
    assert logits.shape == (2, NUM_CLASSES, 64 // stride, 64 // stride)
    assert head.predict(backbone(images), out_size=(64, 64)).shape == (2, NUM_CLASSES, 64, 64)

    # a fixed batch whose label depends on the image: the loss must go down when trained on it
    gt = (images[:, 0] > 0).long() + 2 * (images[:, 1] > 0.5).long()  # classes 0..3
    gt[:, :4, :4] = 255
    samples = _samples(gt)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for step in range(10):
        out = head.loss(backbone(images), samples)
        assert set(out) == {'loss_ce', 'acc_seg'}
        opt.zero_grad()
        out['loss_ce'].backward()
        if step == 0:
            # every head parameter, and the backbone convs up to the coarsest consumed level
            deepest = max(specs[name].stride for name in head.in_features)
            used = [(n, p) for n, p in backbone.named_parameters()
                    if specs[n.split('.')[1]].stride <= deepest]
            no_grad = [n for n, p in used + list(head.named_parameters())
                       if p.grad is None or not p.grad.abs().sum() > 0]
            assert not no_grad, f'no gradient reaches {no_grad}'
        opt.step()
        losses.append(out['loss_ce'].item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_head_errors_name_available_features():
    with pytest.raises(KeyError, match=r"\['s4', 's8', 's16', 's32'\]|available"):
        MODELS.build(dict(type='UPerHead', num_classes=3, input_shapes=PLAIN))
    with pytest.raises(ValueError, match='one feature map'):
        MODELS.build(dict(type='SegmenterLinearHead', num_classes=3, input_shapes=PYRAMID,
                          in_features=('s16', 's32')))
    with pytest.raises(ValueError, match='increasing strides'):
        MODELS.build(dict(type='UPerHead', num_classes=3, input_shapes=PYRAMID,
                          in_features=('s32', 's16')))
    with pytest.raises(TypeError):  # a typo in a head config is an error, not silently ignored
        MODELS.build(dict(type='UPerHead', num_classes=3, input_shapes=PYRAMID, chanels=8))


def test_upernet_structure():
    head = MODELS.build(dict(type='UPerHead', num_classes=7, input_shapes=PYRAMID))
    assert [b[0].output_size for b in head.ppm.branches] == [1, 2, 3, 6]
    assert [c[0].in_channels for c in head.lateral_convs] == [8, 12, 16]
    assert head.ppm.bottleneck[0].in_channels == 20 + 4 * 512
    assert head.fpn_bottleneck[0].in_channels == 4 * 512
    assert head.conv_seg.out_channels == 7


# ------------------------------------------------------------------ losses
def _hand_ce(logits, target, class_weight=None, ignore=255):
    """Per-pixel -w[y] * log softmax(logits)[y], summed over valid pixels, and the valid count."""
    total, count = 0.0, 0
    b, k, h, w = logits.shape
    for n in range(b):
        for i in range(h):
            for j in range(w):
                y = int(target[n, i, j])
                if y == ignore:
                    continue
                z = [float(v) for v in logits[n, :, i, j]]
                m = max(z)
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                wy = 1.0 if class_weight is None else class_weight[y]
                total += wy * (lse - z[y])
                count += 1
    return total, count


def test_cross_entropy_matches_hand_computation_and_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255
    target[1, :, 2] = 255
    total, count = _hand_ce(logits, target)
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(total / count, rel=1e-5)
    assert CrossEntropyLoss(avg_non_ignore=False)(logits, target).item() == pytest.approx(
        total / target.numel(), rel=1e-5)
    assert CrossEntropyLoss(loss_weight=0.4)(logits, target).item() == pytest.approx(
        0.4 * total / count, rel=1e-5)
    cw = [0.5, 2.0, 1.0]
    total_w, _ = _hand_ce(logits, target, cw)
    assert CrossEntropyLoss(class_weight=cw)(logits, target).item() == pytest.approx(
        total_w / count, rel=1e-5)
    # logits at ignored pixels get no gradient
    logits.requires_grad_(True)
    CrossEntropyLoss()(logits, target).backward()
    assert logits.grad[0, :, 0].abs().sum() == 0 and logits.grad[1, :, :, 2].abs().sum() == 0
    assert logits.grad[0, :, 1].abs().sum() > 0


def test_criterion_resizes_to_gt_and_prefixes_nothing():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    gt = torch.randint(0, 3, (1, 4, 4))
    gt[0, 0, 0] = 255
    out = SegCriterion(loss_decode=[dict(type='CrossEntropyLoss'),
                                    dict(type='CrossEntropyLoss', loss_weight=0.5),
                                    dict(type='DiceLoss')])(logits, _samples(gt))
    up = F.interpolate(logits, size=(4, 4), mode='bilinear', align_corners=False)
    total, count = _hand_ce(up, gt)
    assert set(out) == {'loss_ce', 'loss_dice', 'acc_seg'}
    assert out['loss_ce'].item() == pytest.approx(1.5 * total / count, rel=1e-5)
    valid = gt != 255
    assert out['acc_seg'].item() == pytest.approx(
        100.0 * float(((up.argmax(1) == gt) & valid).sum()) / float(valid.sum()), rel=1e-6)


@pytest.mark.parametrize('in_size,out_size,align_corners', [
    ((7, 9), (23, 31), False), ((7, 9), (23, 31), True), ((10, 6), (7, 5), False),
    ((8, 8), (8, 8), False)])
@pytest.mark.parametrize('chunk', [1, 50, 1 << 20])
def test_upsampled_cross_entropy_equals_torch_resize_then_cross_entropy(in_size, out_size,
                                                                         align_corners, chunk):
    """Loss, gradient and argmax equal torch's own F.interpolate + F.cross_entropy (float64),
    upsampling and downsampling, with class weights and ignored pixels, whatever the chunk."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, *in_size, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (2, *out_size))
    target[0, 0] = 255
    target[1, :, -1] = 255
    class_weight = torch.rand(5, dtype=torch.float64) + 0.5
    upstream = torch.randn(2, *out_size, dtype=torch.float64)
    resized = F.interpolate(logits, out_size, mode='bilinear', align_corners=align_corners)
    expected = F.cross_entropy(resized, target, weight=class_weight, ignore_index=255,
                               reduction='none')
    expected_grad, = torch.autograd.grad((expected * upstream).sum(), logits)
    loss, pred = upsampled_cross_entropy(logits, target, class_weight, 255, align_corners,
                                         chunk=chunk)
    grad, = torch.autograd.grad((loss * upstream).sum(), logits)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    assert torch.equal(pred, resized.argmax(1))
    assert (loss[target == 255] == 0).all()


def test_criterion_keeps_no_resized_logits_for_backward():
    """With cross-entropies only, what the graph saves for backward is the low-resolution logits
    and per-pixel values, never a (B, K, H, W) resized tensor; the values equal the resize +
    cross-entropy that torch's autograd chain computes (which does save such tensors)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 8, 8, requires_grad=True)
    gt = torch.randint(0, 6, (2, 32, 32))
    gt[:, :3] = 255
    resized_numel = 2 * 6 * 32 * 32
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    crit = SegCriterion(loss_decode=[dict(type='CrossEntropyLoss'),
                                     dict(type='CrossEntropyLoss', loss_weight=0.4,
                                          class_weight=[1.0, 2.0, 1.0, 0.5, 1.0, 1.0])])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = crit(logits, _samples(gt))
    assert saved and max(saved) < resized_numel / 4, saved
    grad, = torch.autograd.grad(out['loss_ce'], logits)

    reference = logits.detach().clone().requires_grad_()
    up = F.interpolate(reference, size=(32, 32), mode='bilinear', align_corners=False)
    valid = (gt != 255).sum()
    plain = F.cross_entropy(up, gt, ignore_index=255, reduction='sum') / valid
    weighted = F.cross_entropy(up, gt, ignore_index=255, reduction='none',
                               weight=torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 1.0])).sum() / valid
    expected = plain + 0.4 * weighted
    expected_grad, = torch.autograd.grad(expected, reference)
    assert out['loss_ce'].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)
    assert out['acc_seg'].item() == pytest.approx(accuracy(up.detach(), gt).item(), rel=1e-6)
    # a sampler needs the resized logits: that path still saves them
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SegCriterion(loss_decode=dict(type='CrossEntropyLoss'),
                     sampler=dict(type='OHEMPixelSampler', min_kept=10))(logits, _samples(gt))
    assert max(saved) >= resized_numel


def test_accuracy_and_dice_by_hand():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1, 0, :2] = 5.0  # predicts 1, 1, 0, 0
    target = torch.tensor([[[1, 0, 0, 255]]])
    assert accuracy(logits, target).item() == pytest.approx(100 * 2 / 3)
    # dice with smooth=0: p = softmax, valid pixels 0..2
    p1 = torch.sigmoid(torch.tensor(5.0)).item()
    p = [[1 - p1, p1], [1 - p1, p1], [0.5, 0.5]]  # per valid pixel, (class 0, class 1)
    t = [[0, 1], [1, 0], [1, 0]]
    dice = []
    for c in range(2):
        inter = sum(p[i][c] * t[i][c] for i in range(3))
        union = sum(p[i][c] for i in range(3)) + sum(t[i][c] for i in range(3))
        dice.append(2 * inter / union)
    expected = 1 - sum(dice) / 2
    assert DiceLoss(smooth=0.0)(logits, target).item() == pytest.approx(expected, rel=1e-5)
    perfect = torch.tensor([[[[-20.0, 20.0, 20.0]], [[20.0, -20.0, -20.0]]]])
    assert DiceLoss()(perfect, torch.tensor([[[1, 0, 0]]])).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize('thresh', [None, 0.7])
def test_ohem_keeps_at_least_min_kept_hard_pixels(thresh):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8) * 3
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :2] = 255
    weight = OHEMPixelSampler(thresh=thresh, min_kept=40)(logits, target)
    assert weight.shape == target.shape
    assert (weight[target == 255] == 0).all()
    kept = weight.bool()
    assert int(kept.sum()) >= 40
    prob = logits.softmax(1).gather(1, target.clamp(max=3)[:, None])[:, 0]
    valid = target != 255
    # every kept pixel is at least as hard as every dropped valid one
    assert prob[kept].max() <= prob[valid & ~kept].min()
    if thresh is not None:  # all valid pixels below the threshold are kept
        assert kept[valid & (prob < thresh)].all()
    else:
        assert int(kept.sum()) == 40
    # min_kept larger than the valid pixels keeps them all
    assert OHEMPixelSampler(thresh=thresh, min_kept=10_000)(logits, target)[valid].all()


def test_sampler_weights_reach_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    gt = torch.randint(0, 3, (1, 4, 4))
    crit = SegCriterion(loss_decode=dict(type='CrossEntropyLoss'),
                        sampler=dict(type='OHEMPixelSampler', min_kept=3))
    weight = crit.sampler(logits, gt)
    masked = gt.clone()
    masked[weight == 0] = 255
    total, count = _hand_ce(logits, masked)
    assert count == 3
    assert crit(logits, _samples(gt))['loss_ce'].item() == pytest.approx(total / count, rel=1e-5)


# ------------------------------------------------------------------ Segmenter mask transformer
def test_segmenter_mask_head_structure_and_cosine_masks():
    torch.manual_seed(0)
    specs = {'s16': FeatureSpec(128, 16)}
    head = MODELS.build(dict(type='SegmenterMaskHead', num_classes=NUM_CLASSES,
                             input_shapes=specs)).eval()
    # official defaults: d_model = encoder width, heads = d_model // 64, 2 layers, ff 4 * d_model
    assert head.cls_emb.shape == (1, NUM_CLASSES, 128)
    assert len(head.blocks) == 2 and head.blocks[0].attn.num_heads == 2
    assert head.blocks[0].mlp.fc1.out_features == 512
    assert head.proj_patch.shape == head.proj_classes.shape == (128, 128)
    assert head.mask_norm.normalized_shape == (NUM_CLASSES,)

    feats = {'s16': torch.randn(2, 128, 3, 4)}
    captured = {}
    head.decoder_norm.register_forward_hook(lambda m, i, o: captured.setdefault('x', o))
    cos = head.cosine_masks(feats)  # (B, N, K)
    x = captured['x']
    patches = x[:, :12] @ head.proj_patch
    classes = x[:, 12:] @ head.proj_classes
    expected = F.cosine_similarity(patches[:, :, None], classes[:, None], dim=-1)
    torch.testing.assert_close(cos, expected, atol=1e-5, rtol=1e-5)
    assert cos.abs().max() <= 1 + 1e-5
    # the projections' scale does not matter (L2 normalisation)
    with torch.no_grad():
        head.proj_patch.mul_(3.0)
    torch.testing.assert_close(head.cosine_masks(feats), cos, atol=1e-5, rtol=1e-5)

    logits = head(feats)
    assert logits.shape == (2, NUM_CLASSES, 3, 4)
    # mask_norm (identity affine at init) standardises each pixel's class scores
    expected_logits = F.layer_norm(cos, (NUM_CLASSES,))  # (B, N, K)
    torch.testing.assert_close(logits.flatten(2).transpose(1, 2), expected_logits,
                               atol=1e-5, rtol=1e-5)
    # patch order: logits[:, :, i, j] is token i * w + j
    torch.testing.assert_close(logits[:, :, 1, 2], expected_logits[:, 1 * 4 + 2])


def test_segmenter_linear_head_is_norm_then_linear():
    torch.manual_seed(0)
    head = MODELS.build(dict(type='SegmenterLinearHead', num_classes=3,
                             input_shapes={'s16': FeatureSpec(8, 16)}))
    x = torch.randn(1, 8, 2, 3)
    out = head({'s16': x})
    for i in range(2):
        for j in range(3):
            token = F.layer_norm(x[0, :, i, j], (8,))
            torch.testing.assert_close(out[0, :, i, j], head.head.weight @ token + head.head.bias)
