"""Segmentor and SegDataPreprocessor: padding and normalisation, sliding-window inference checked
against hand computations with a model whose logits are known, TTA on equivariant toys, resizing
back to ori_shape, the ignore label in the loss, backbone checkpoint loading."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densevit.models.contract import FeatureSpec
from densevit.models.losses import SegCriterion
from densevit.models.tasks.segmentor import slide_windows
from densevit.registry import MODELS
from densevit.structures import DataSample, PixelData


# ------------------------------------------------------------------ toys
@MODELS.register_module(name='_TestIdentityBackbone', force=True)
class IdentityBackbone(nn.Module):
    """Returns the image itself as a stride-1 'feature' (plus a scale so it has a parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_features = {'s1': FeatureSpec(3, 1)}
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return {'s1': x * self.scale}


@MODELS.register_module(name='_TestToyHead', force=True)
class ToyHead(nn.Module):
    """kind='pointwise': logits = the input channels (flip- and translation-equivariant);
    kind='position': logits = (column in the window, row in the window, input channel 0).
    Records the input sizes it sees."""

    def __init__(self, *, input_shapes, num_classes: int = 3, kind: str = 'pointwise') -> None:
        super().__init__()
        assert num_classes == 3
        self.num_classes, self.kind, self.align_corners = num_classes, kind, False
        self.seen: list[tuple[int, int]] = []
        self.criterion = SegCriterion(loss_decode=dict(type='CrossEntropyLoss'))

    def forward(self, features):
        x = features['s1']
        b, _, h, w = x.shape
        self.seen.append((h, w))
        if self.kind == 'pointwise':
            return x.clone()
        cols = torch.arange(w, dtype=x.dtype).expand(b, h, w)
        rows = torch.arange(h, dtype=x.dtype)[:, None].expand(b, h, w)
        return torch.stack([cols, rows, x[:, 0]], dim=1)

    def loss(self, features, data_samples):
        return self.criterion(self.forward(features), data_samples)

    def predict(self, features, out_size):
        return F.interpolate(self.forward(features), size=tuple(out_size), mode='bilinear')


def _toy_segmentor(kind='pointwise', **test_cfg):
    return MODELS.build(dict(
        type='Segmentor', backbone=dict(type='_TestIdentityBackbone'),
        decode_head=dict(type='_TestToyHead', kind=kind),
        data_preprocessor=dict(type='SegDataPreprocessor', mean=(0, 0, 0), std=(1, 1, 1)),
        test_cfg=test_cfg or None)).eval()


def _sample(img_shape, ori_shape=None, **meta):
    return DataSample(metainfo=dict(img_shape=img_shape, ori_shape=ori_shape or img_shape, **meta))


class StandInBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out_features = {'s4': FeatureSpec(8, 4), 's8': FeatureSpec(8, 8),
                             's16': FeatureSpec(8, 16), 's32': FeatureSpec(8, 32)}
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 4, 4)] +
                                   [nn.Conv2d(8, 8, 2, 2) for _ in range(3)])

    def forward(self, x):
        out = {}
        for name, conv in zip(self.out_features, self.convs):
            x = conv(x)
            out[name] = x
        return out


MODELS.register_module(name='_TestStandInBackbone', module=StandInBackbone, force=True)


# ------------------------------------------------------------------ data preprocessor
def test_preprocessor_normalises_pads_and_pads_gt_only_in_training():
    pre = MODELS.build(dict(type='SegDataPreprocessor', size=(8, 8), size_divisor=4))
    imgs = [torch.full((3, 5, 6), 200, dtype=torch.uint8), torch.zeros(3, 7, 9, dtype=torch.uint8)]
    mean = torch.tensor([123.675, 116.28, 103.53])
    std = torch.tensor([58.395, 57.12, 57.375])
    for training in (True, False):
        samples = [_sample((5, 6)), _sample((7, 9))]
        for s, img in zip(samples, imgs):
            s.gt_sem_seg = PixelData(data=torch.ones(1, *img.shape[1:], dtype=torch.long))
        out = pre(dict(inputs=imgs, data_samples=samples), training)
        x = out['inputs']
        assert x.shape == (2, 3, 8, 12)  # max(7, 8) = 8; max(9, 8) = 9 -> 12 by size_divisor 4
        torch.testing.assert_close(x[0, :, 0, 0], (200 - mean) / std)
        torch.testing.assert_close(x[1, :, 6, 8], (0 - mean) / std)
        assert (x[0, :, 5:] == 0).all() and (x[0, :, :, 6:] == 0).all()
        assert all(s.metainfo['pad_shape'] == (8, 12) for s in out['data_samples'])
        gt = out['data_samples'][0].gt_sem_seg.data
        if training:
            assert gt.shape == (1, 8, 12)
            assert (gt[:, :5, :6] == 1).all() and (gt[:, 5:] == 255).all() and (
                gt[:, :, 6:] == 255).all()
        else:
            assert gt.shape == (1, 5, 6)


def test_preprocessor_pads_to_size_in_training_only_with_0_and_255():
    """Padding happens once, after normalisation: the image border is 0 in normalised units
    (not the normalised value of a black pixel), the label border 255; ``size`` is the training
    crop, so a test image keeps its own size."""
    pre = MODELS.build(dict(type='SegDataPreprocessor', size=(16, 16)))
    img = torch.full((3, 10, 12), 30, dtype=torch.uint8)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    sample = _sample((10, 12))
    sample.gt_sem_seg = PixelData(data=torch.full((1, 10, 12), 4, dtype=torch.long))
    out = pre(dict(inputs=[img], data_samples=[sample]), True)
    x, gt = out['inputs'][0], out['data_samples'][0].gt_sem_seg.data
    assert x.shape == (3, 16, 16) and gt.shape == (1, 16, 16)
    torch.testing.assert_close(x[:, :10, :12], ((30 - mean) / std).expand(3, 10, 12))
    assert (x[:, 10:] == 0).all() and (x[:, :, 12:] == 0).all()
    assert (gt[:, :10, :12] == 4).all()
    assert (gt[:, 10:] == 255).all() and (gt[:, :, 12:] == 255).all()
    assert out['data_samples'][0].img_shape == (10, 12)
    assert out['data_samples'][0].pad_shape == (16, 16)
    test = pre(dict(inputs=[img], data_samples=[_sample((10, 12))]), False)
    assert test['inputs'].shape == (1, 3, 10, 12)


def test_preprocessor_bgr_swap_and_errors():
    pre = MODELS.build(dict(type='SegDataPreprocessor', mean=(0, 0, 0), std=(1, 1, 1),
                            bgr_to_rgb=True))
    img = torch.tensor([1, 2, 3], dtype=torch.uint8).view(3, 1, 1)
    assert pre(dict(inputs=[img]))['inputs'].flatten().tolist() == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match=r'\(3, H, W\)'):
        pre(dict(inputs=[torch.zeros(1, 4, 4, dtype=torch.uint8)]))
    with pytest.raises(TypeError):
        MODELS.build(dict(type='SegDataPreprocessor', size_divisibility=32))


# ------------------------------------------------------------------ sliding windows
def test_slide_windows_by_hand():
    # 1024 x 2048 with 512 crops, stride 341: rows 0, 341, 512 (last aligned); cols ..., 1536
    wins = slide_windows((1024, 2048), (512, 512), (341, 341))
    assert sorted({(y1, y2) for y1, y2, _, _ in wins}) == [(0, 512), (341, 853), (512, 1024)]
    assert sorted({(x1, x2) for _, _, x1, x2 in wins}) == [
        (0, 512), (341, 853), (682, 1194), (1023, 1535), (1364, 1876), (1536, 2048)]
    assert len(wins) == 18
    assert slide_windows((300, 400), (512, 512), (341, 341)) == [(0, 300, 0, 400)]
    assert slide_windows((5, 7), (3, 4), (2, 2)) == [
        (0, 3, 0, 4), (0, 3, 2, 6), (0, 3, 3, 7), (2, 5, 0, 4), (2, 5, 2, 6), (2, 5, 3, 7)]


@pytest.mark.parametrize('size,crop,stride', [((5, 7), (3, 4), (2, 2)), ((13, 9), (6, 6), (4, 5)),
                                               ((8, 8), (8, 8), (5, 5))])
def test_slide_windows_cover_every_pixel(size, crop, stride):
    count = torch.zeros(size)
    for y1, y2, x1, x2 in slide_windows(size, crop, stride):
        assert (y2 - y1, x2 - x1) == (min(crop[0], size[0]), min(crop[1], size[1]))
        count[y1:y2, x1:x2] += 1
    assert (count > 0).all()
    assert count[-1].min() > 0 and count[:, -1].min() > 0


@pytest.mark.parametrize('batch_size', [1, 4, 100])
def test_slide_inference_averages_overlaps_by_hand(batch_size):
    """Logits = (column in window, row in window, pixel value): overlapping windows disagree on
    the first two, and the result must be their average over the windows covering each pixel."""
    torch.manual_seed(0)
    model = _toy_segmentor('position', mode='slide', crop_size=(3, 4), stride=(2, 2),
                           batch_size=batch_size)
    x = torch.randn(2, 3, 5, 7)
    logits = model.slide_inference(x)
    windows = [(0, 3, 0, 4), (0, 3, 2, 6), (0, 3, 3, 7), (2, 5, 0, 4), (2, 5, 2, 6), (2, 5, 3, 7)]
    for i in range(5):
        for j in range(7):
            covering = [(y1, x1) for y1, y2, x1, x2 in windows if y1 <= i < y2 and x1 <= j < x2]
            assert covering, (i, j)
            col = sum(j - x1 for _, x1 in covering) / len(covering)
            row = sum(i - y1 for y1, _ in covering) / len(covering)
            for b in range(2):
                assert logits[b, 0, i, j].item() == pytest.approx(col)
                assert logits[b, 1, i, j].item() == pytest.approx(row)
                assert logits[b, 2, i, j].item() == pytest.approx(x[b, 0, i, j].item(), abs=1e-6)
    assert set(model.decode_head.seen) == {(3, 4)}


def test_slide_windows_smaller_than_the_crop_are_padded():
    """An image shorter than the crop: the model sees the crop size (padded with 0 at the
    bottom / right), and the logits of the image's own pixels come back."""
    model = _toy_segmentor('position', mode='slide', crop_size=(6, 8), stride=(4, 4))
    x = torch.randn(2, 3, 4, 11)
    logits = model.slide_inference(x)
    assert set(model.decode_head.seen) == {(6, 8)}
    assert logits.shape == (2, 3, 4, 11)
    # windows (0, 4, 0, 8) and (0, 4, 3, 11): rows are the window's own rows
    torch.testing.assert_close(logits[:, 1], torch.arange(4.).view(1, 4, 1).expand(2, 4, 11))
    torch.testing.assert_close(logits[:, 2], x[:, 0])


def test_slide_equals_whole_when_one_window_covers_the_image():
    torch.manual_seed(0)
    cfg = dict(type='Segmentor', backbone=dict(type='_TestStandInBackbone'),
               decode_head=dict(type='UPerHead', num_classes=4, channels=8))
    whole = MODELS.build(dict(cfg, test_cfg=dict(mode='whole'))).eval()
    slide = MODELS.build(dict(cfg, test_cfg=dict(mode='slide', crop_size=(64, 64),
                                                 stride=(48, 48)))).eval()
    slide.load_state_dict(whole.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(slide.inference(x), whole.inference(x))
        samples = slide.predict(x, [_sample((64, 64)), _sample((64, 64))])
        assert samples[0].seg_logits.data.shape == (4, 64, 64)
        # and with several windows the output still has the full size
        slide.test_cfg.update(crop_size=(32, 32), stride=(24, 24))
        assert slide.inference(x).shape == (2, 4, 64, 64)


# ------------------------------------------------------------------ TTA
def test_flip_tta_of_flip_equivariant_model_equals_plain():
    torch.manual_seed(0)
    plain = _toy_segmentor()
    tta = _toy_segmentor(tta=dict(scales=(1.0,), flip=True))
    x = torch.randn(2, 3, 6, 9)
    ref = plain.predict(x, [_sample((6, 9)), _sample((6, 9))])
    out = tta.predict(x, [_sample((6, 9)), _sample((6, 9))])
    for r, o in zip(ref, out):
        torch.testing.assert_close(o.seg_logits.data, r.seg_logits.data.softmax(0))
        assert torch.equal(o.pred_sem_seg.data, r.pred_sem_seg.data)
    assert tta.decode_head.seen == [(6, 9), (6, 9)]  # plain and flipped


def test_multiscale_tta_of_scale_invariant_model_equals_plain():
    # a pointwise model on per-image constant colours is invariant to any resize
    colours = torch.randn(2, 3, 1, 1)
    x = colours.expand(2, 3, 8, 12).contiguous()
    plain = _toy_segmentor()
    tta = _toy_segmentor(tta=dict(scales=(0.5, 0.75, 1.0, 1.5), flip=True))
    ref = plain.inference(x).softmax(1)
    torch.testing.assert_close(tta.tta_inference(x), ref)
    assert sorted(set(tta.decode_head.seen)) == [(4, 6), (6, 9), (8, 12), (12, 18)]
    assert len(tta.decode_head.seen) == 8


def test_tta_with_slide_mode():
    x = torch.randn(1, 3, 8, 12)
    tta = _toy_segmentor(mode='slide', crop_size=(4, 4), stride=(3, 3),
                         tta=dict(scales=(1.0, 2.0), flip=False))
    assert tta.tta_inference(x).shape == (1, 3, 8, 12)
    assert set(tta.decode_head.seen) == {(4, 4)}


# ------------------------------------------------------------------ back to the original image
def test_predictions_cropped_resized_and_unflipped():
    torch.manual_seed(0)
    model = _toy_segmentor()
    x = torch.randn(2, 3, 16, 16)  # padded batch; image 0 is 10x12, resized from 20x24
    samples = [_sample((10, 12), (20, 24)),
               _sample((16, 14), (16, 14), flip=True, flip_direction='horizontal')]
    out = model.predict(x, samples)
    assert out[0] is samples[0]
    expected0 = F.interpolate(x[:1, :, :10, :12], size=(20, 24), mode='bilinear')[0]
    torch.testing.assert_close(out[0].seg_logits.data, expected0)
    assert out[0].pred_sem_seg.data.shape == (1, 20, 24)
    assert out[0].pred_sem_seg.data.dtype == torch.long
    assert torch.equal(out[0].pred_sem_seg.data[0], expected0.argmax(0))
    torch.testing.assert_close(out[1].seg_logits.data, x[1, :, :16, :14].flip(-1))


def test_end_to_end_predict_through_preprocessor_keeps_gt_at_ori_shape():
    model = MODELS.build(dict(
        type='Segmentor', backbone=dict(type='_TestStandInBackbone'),
        decode_head=dict(type='UPerHead', num_classes=4, channels=8),
        auxiliary_head=dict(type='FCNHead', num_classes=4, channels=8, in_features=('s16',)),
        data_preprocessor=dict(type='SegDataPreprocessor', size_divisor=32),
        test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(24, 24), batch_size=2))).eval()
    s = _sample((40, 50), (80, 100))
    s.gt_sem_seg = PixelData(data=torch.zeros(1, 80, 100, dtype=torch.long))
    data = model.data_preprocessor(dict(inputs=[torch.zeros(3, 40, 50, dtype=torch.uint8)],
                                        data_samples=[s]), False)
    assert data['inputs'].shape == (1, 3, 64, 64)
    with torch.no_grad():
        (out,) = model(**data, mode='predict')
    assert out.pred_sem_seg.data.shape == (1, 80, 100)
    assert out.seg_logits.data.shape == (4, 80, 100)
    assert out.gt_sem_seg.data.shape == (1, 80, 100)
    assert model(data['inputs'], mode='tensor').shape == (1, 4, 16, 16)


# ------------------------------------------------------------------ loss
def test_loss_excludes_ignore_label_by_hand():
    model = _toy_segmentor().train()
    x = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # (1, 3, 1, 2) = logits
    s = _sample((1, 2))
    s.gt_sem_seg = PixelData(data=torch.tensor([[[0, 255]]]))
    losses = model(x, [s], mode='loss')
    expected = math.log(math.exp(2) + 2) - 2  # only pixel 0 counts
    assert losses['decode.loss_ce'].item() == pytest.approx(expected, rel=1e-6)
    assert losses['decode.acc_seg'].item() == pytest.approx(100.0)
    s.gt_sem_seg = PixelData(data=torch.tensor([[[0, 2]]]))
    both = (expected + math.log(math.exp(1) + 2) - 0) / 2
    assert model(x, [s], mode='loss')['decode.loss_ce'].item() == pytest.approx(both, rel=1e-6)


def test_loss_names_with_auxiliary_heads():
    model = MODELS.build(dict(
        type='Segmentor', backbone=dict(type='_TestStandInBackbone'),
        decode_head=dict(type='UPerHead', num_classes=4, channels=8),
        auxiliary_head=[dict(type='FCNHead', num_classes=4, channels=8,
                             loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
                        dict(type='SegmenterLinearHead', num_classes=4, in_features=('s32',))]))
    samples = [_sample((32, 32)), _sample((32, 32))]  # batch 2: BatchNorm after 1x1 pooling
    for s in samples:
        s.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 32, 32)))
    losses = model(torch.randn(2, 3, 32, 32), samples, mode='loss')
    assert set(losses) == {'decode.loss_ce', 'decode.acc_seg', 'aux_0.loss_ce', 'aux_0.acc_seg',
                           'aux_1.loss_ce', 'aux_1.acc_seg'}


# ------------------------------------------------------------------ config and checkpoint
def test_test_cfg_errors():
    with pytest.raises(KeyError, match='crop'):
        _toy_segmentor(mode='slide', crop=(4, 4), stride=(2, 2))
    with pytest.raises(ValueError, match='crop_size'):
        _toy_segmentor(mode='slide', stride=(2, 2))
    with pytest.raises(ValueError, match='whole'):
        _toy_segmentor(mode='sliding')
    with pytest.raises(KeyError, match='scale'):
        _toy_segmentor(tta=dict(scale=(1.0,)))


def test_backbone_checkpoint_loaded_at_init_weights(tmp_path):
    cfg = dict(type='Segmentor', backbone=dict(type='_TestStandInBackbone'),
               decode_head=dict(type='UPerHead', num_classes=4, channels=8))
    source = MODELS.build(cfg)
    path = tmp_path / 'backbone.pth'
    torch.save(source.backbone.state_dict(), path)
    target = MODELS.build(dict(cfg, backbone_checkpoint=str(path)))
    assert not torch.equal(target.backbone.convs[0].weight, source.backbone.convs[0].weight)
    target.init_weights()
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[k], v), k


def test_any_timm_model_feeds_upernet_through_the_contract():
    """The backbone swap promise: a timm ResNet-18 in place of the stand-in, one config line."""
    model = MODELS.build(dict(
        type='Segmentor', backbone=dict(type='TimmBackbone', model_name='resnet18'),
        decode_head=dict(type='UPerHead', num_classes=4, channels=16),
        auxiliary_head=dict(type='FCNHead', num_classes=4, channels=8, in_features=('s16',)),
        data_preprocessor=dict(type='SegDataPreprocessor', size_divisor=32)))
    samples = [_sample((60, 70)), _sample((60, 70))]
    for s in samples:
        s.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 60, 70)))
    data = model.data_preprocessor(
        dict(inputs=[torch.zeros(3, 60, 70, dtype=torch.uint8)] * 2, data_samples=samples), True)
    losses = model(**data, mode='loss')
    assert torch.isfinite(losses['decode.loss_ce']) and torch.isfinite(losses['aux.loss_ce'])
    model.eval()
    with torch.no_grad():
        out = model(**data, mode='predict')
    assert out[0].pred_sem_seg.data.shape == (1, 60, 70)
