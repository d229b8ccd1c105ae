"""Loading converted weights: resizing by value against the reference packages' own resizing
(timm's ``resample_abs_pos_embed``, segment-anything's ``get_rel_pos`` and its Attention at a
smaller window, timm's resize of a (heads, H, W) bias table and a cubic convolution written
out here for NAT's rpb), and ``load_backbone_checkpoint``: whole-model files split into backbone
and neck, complete loads or a named error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from segment_anything.modeling import image_encoder as sam_encoder
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table_simple

from densevit.checkpoint.loading import load_backbone_checkpoint, load_state_dict
from densevit.checkpoint.swin import convert_swin
from densevit.checkpoint.vit import CONVERTERS, convert_mae, convert_vitdet
from densevit.models.backbones.nat import NeighborhoodAttention2d
from densevit.models.backbones.vit import Attention, ViT
from densevit.registry import MODELS

from .test_vit_converters import _detectron2_vitdet_state_dict


def _plain_vit(pretrain: int, **kwargs) -> ViT:
    cfg = dict(arch='tiny', depth=1, global_attn_indexes=(), window_size=0, use_rel_pos=False,
               img_size=pretrain, pretrain_img_size=pretrain)
    return ViT(**{**cfg, **kwargs}).eval()


# ---------------------------------------------------------------- pos_embed

@pytest.mark.parametrize('old,new,mode', [(14, 24, 'bicubic'), (14, 64, 'bicubic'),
                                          (24, 14, 'bicubic'), (24, 32, 'bilinear'),
                                          (32, 20, 'bilinear')])
def test_pos_embed_resized_at_load_as_timm_resamples(old, new, mode):
    """A (1, old, old, C) grid loaded into a model stored at new x new: timm's
    resample_abs_pos_embed with the model's interpolation, no antialiasing (detectron2's
    get_abs_pos, MAE's interpolate_pos_embed and Segmenter's resize_pos_embed have none)."""
    source = _plain_vit(16 * old)
    with torch.no_grad():
        source.pos_embed.normal_()
    target = _plain_vit(16 * new, pos_embed_interpolation=mode)
    report = load_state_dict(target, source.state_dict(), log=False)
    assert report.resized == {'pos_embed': ((1, old, old, 192), (1, new, new, 192))}
    tokens = source.pos_embed.detach().reshape(1, old * old, 192)
    expected = resample_abs_pos_embed(tokens, [new, new], num_prefix_tokens=0,
                                      interpolation=mode, antialias=False)
    torch.testing.assert_close(target.pos_embed.detach().reshape(1, new * new, 192), expected)


@pytest.mark.parametrize('mode', ['bicubic', 'bilinear'])
def test_pos_embed_resized_to_a_non_square_input_as_timm_resamples(mode):
    model = _plain_vit(224, pos_embed_interpolation=mode)
    with torch.no_grad():
        model.pos_embed.normal_()
    tokens = model.pos_embed.detach().reshape(1, 196, 192)
    expected = resample_abs_pos_embed(tokens, [20, 9], num_prefix_tokens=0, interpolation=mode,
                                      antialias=False)
    torch.testing.assert_close(model.abs_pos((20, 9)).detach().reshape(1, 180, 192), expected)


def test_token_list_pos_embed_resized_as_timm_resamples():
    """The (1, N, C) branch of the resizer (a model storing a token list)."""
    model = torch.nn.Module()
    model.pos_embed = torch.nn.Parameter(torch.zeros(1, 24 * 24, 8))
    old = torch.randn(1, 14 * 14, 8)
    load_state_dict(model, {'pos_embed': old}, log=False)
    expected = resample_abs_pos_embed(old, [24, 24], num_prefix_tokens=0,
                                      interpolation='bicubic', antialias=False)
    torch.testing.assert_close(model.pos_embed.detach(), expected)


# ---------------------------------------------------------------- rel_pos

@pytest.mark.parametrize('old,new', [(14, 7), (64, 32), (14, 20)])
def test_rel_pos_resized_at_load_as_segment_anything_indexes_it(old, new):
    """Tables for windows of ``old`` loaded into windows of ``new``: densevit resizes them once
    at load, segment-anything's get_rel_pos resizes the original at every call; the gathered
    (q, k, C) tables agree."""
    source = Attention(48, num_heads=3, qkv_bias=True, use_rel_pos=True,
                       rel_pos_size=(old, old))
    with torch.no_grad():
        source.rel_pos_h.normal_()
        source.rel_pos_w.normal_()
    target = Attention(48, num_heads=3, qkv_bias=True, use_rel_pos=True,
                       rel_pos_size=(new, new))
    report = load_state_dict(target, source.state_dict(), log=False)
    assert report.resized['rel_pos_h'] == ((2 * old - 1, 16), (2 * new - 1, 16))
    for name in ('rel_pos_h', 'rel_pos_w'):
        expected = sam_encoder.get_rel_pos(new, new, getattr(source, name).detach())
        ours = sam_encoder.get_rel_pos(new, new, getattr(target, name).detach())  # no resize
        torch.testing.assert_close(ours, expected)


def test_window_change_equals_segment_anything_attention_at_the_smaller_window():
    """segment-anything's Attention built for 14x14 windows, run on a 7x7 window (get_rel_pos
    resizes its tables on the fly), against densevit's Attention for 7x7 windows holding the
    same weights resized at load."""
    torch.manual_seed(0)
    ref = sam_encoder.Attention(48, num_heads=3, qkv_bias=True, use_rel_pos=True,
                                input_size=(14, 14)).eval()
    with torch.no_grad():
        ref.rel_pos_h.normal_()
        ref.rel_pos_w.normal_()
    ours = Attention(48, num_heads=3, qkv_bias=True, use_rel_pos=True, rel_pos_size=(7, 7))
    report = load_state_dict(ours, ref.state_dict(), strict=True, log=False)
    assert set(report.resized) == {'rel_pos_h', 'rel_pos_w'}
    x = torch.randn(2, 7, 7, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- NAT rpb

def _cubic_convolution(table: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Resample ``table`` to ``size`` along ``axis`` by Keys' cubic convolution (a = -0.75, the
    constant of PyTorch's and OpenCV's bicubic), sample centres at half pixels
    (align_corners=False), the border value repeated outside: written from the definition, as an
    independent reference for torch's bicubic resize."""
    a, n = -0.75, table.shape[axis]

    def weight(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
        return a * (d ** 3 - 5 * d ** 2 + 8 * d - 4) if d < 2 else 0.0

    rows = []
    for j in range(size):
        src = (j + 0.5) * n / size - 0.5
        first = math.floor(src)
        rows.append(sum(weight(src - k) * np.take(table, min(max(k, 0), n - 1), axis=axis)
                        for k in range(first - 1, first + 3)))
    return np.stack(rows, axis=axis)


@pytest.mark.parametrize('old,new', [(7, 5), (7, 11), (5, 3), (3, 1)])
def test_rpb_resized_at_load_as_timm_resizes_a_heads_first_table(old, new):
    """A NAT checkpoint of kernel ``old`` loaded into kernel ``new``: each head's (2k-1, 2k-1)
    table, rows dy and columns dx, is resized bicubically as one grid, which is what timm's
    ``resize_rel_pos_bias_table_simple`` does to a (heads, H, W) table (MaxViT's layout, NAT's
    too) and what the official Swin / mmseg do to Swin's tables. (timm's other resizer,
    ``resize_rel_pos_bias_table``, is BEiT's geometric-progression enlargement, for growing
    windows only.)"""
    source = NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=old)
    with torch.no_grad():
        source.rpb.normal_()
    target = NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=new)
    report = load_state_dict(target, source.state_dict(), log=False)
    side_old, side_new = 2 * old - 1, 2 * new - 1
    assert report.clean
    assert report.resized == {'rpb': ((2, side_old, side_old), (2, side_new, side_new))}
    table = source.rpb.detach()
    expected = resize_rel_pos_bias_table_simple(table, new_window_size=(new, new),
                                                new_bias_shape=(2, side_new, side_new))
    torch.testing.assert_close(target.rpb.detach(), expected)
    by_hand = _cubic_convolution(_cubic_convolution(table.double().numpy(), side_new, axis=1),
                                 side_new, axis=2)
    torch.testing.assert_close(target.rpb.detach(), torch.from_numpy(by_hand).float(),
                               atol=1e-5, rtol=1e-5)
    # the zero offset sits on a sample centre at every size: its bias is kept exactly
    torch.testing.assert_close(target.rpb.detach()[:, new - 1, new - 1], table[:, old - 1, old - 1])


def test_rpb_resize_keeps_rows_as_dy_and_columns_as_dx():
    """Kernel 5 -> 3 of a table holding its row index (dy + 4): by hand, Keys' cubic convolution
    at the source positions 0.4, 2.2, 4, 5.8, 7.6 gives 0.316, 2.248, 4, 5.752, 7.684 (e.g. at
    0.4: weights -0.108, 0.72, 0.46, -0.072 on rows 0, 0, 1, 2, the first row repeated), the
    same in every column; the transposed table gives the transposed result. The resize
    stretches: the new edge offsets +-2 are sampled at the old +-3.6."""
    rows = torch.arange(9.0)[:, None].expand(9, 9)
    hand = torch.tensor([0.316, 2.248, 4.0, 5.752, 7.684])
    for table, expected in ((rows, hand[:, None].expand(5, 5)),
                            (rows.t(), hand[None, :].expand(5, 5))):
        source = NeighborhoodAttention2d(dim=4, num_heads=1, kernel_size=5)
        target = NeighborhoodAttention2d(dim=4, num_heads=1, kernel_size=3)
        with torch.no_grad():
            source.rpb.copy_(table[None])
        load_state_dict(target, source.state_dict(), log=False)
        torch.testing.assert_close(target.rpb.detach()[0], expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- load_backbone_checkpoint

def _vitdet_segmentor(dim: int, depth: int, out: int, **backbone):
    return MODELS.build(dict(
        type='Segmentor',
        backbone=dict(dict(type='ViT', arch='tiny', embed_dim=dim, depth=depth, num_heads=3,
                           global_attn_indexes=(depth - 1,), window_size=14, img_size=1024,
                           pretrain_img_size=224), **backbone),
        neck=dict(type='SimpleFeaturePyramid', out_channels=out, top_block=True),
        decode_head=dict(type='FCNHead', in_features=('s16',), num_classes=3, channels=8)))


def test_vitdet_file_fills_backbone_and_neck(tmp_path):
    sd = _detectron2_vitdet_state_dict(96, 3, 32)
    path = tmp_path / 'vitdet.pth'
    torch.save(convert_vitdet({'model': sd}), path)
    model = _vitdet_segmentor(96, 3, 32)
    model.backbone_checkpoint = str(path)
    model.init_weights()
    own = model.state_dict()
    torch.testing.assert_close(own['backbone.blocks.2.attn.rel_pos_h'],
                               sd['backbone.net.blocks.2.attn.rel_pos_h'], rtol=0, atol=0)
    torch.testing.assert_close(own['neck.lateral.s4.conv.weight'],
                               sd['backbone.simfp_2.4.weight'], rtol=0, atol=0)


def test_sam_file_fills_backbone_and_neck_and_skips_prompt_parts(tmp_path):
    torch.manual_seed(0)
    encoder = sam_encoder.ImageEncoderViT(img_size=64, patch_size=16, embed_dim=48, depth=2,
                                          num_heads=3, qkv_bias=True, use_rel_pos=True,
                                          window_size=2, global_attn_indexes=(1,), out_chans=16,
                                          norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
    sd = {f'image_encoder.{k}': v for k, v in encoder.state_dict().items()}
    sd['prompt_encoder.pe_layer.positional_encoding_gaussian_matrix'] = torch.randn(2, 8)
    converted = CONVERTERS['sam'](sd)
    assert any(k.startswith('prompt_encoder.') for k in converted)
    model = MODELS.build(dict(
        type='Segmentor',
        backbone=dict(type='ViT', arch='tiny', embed_dim=48, depth=2, num_heads=3,
                      global_attn_indexes=(1,), window_size=2, img_size=64, pretrain_img_size=64),
        neck=dict(type='SamNeck', out_channels=16),
        decode_head=dict(type='FCNHead', in_features=('s16',), num_classes=3,
                         channels=8))).eval()
    load_backbone_checkpoint(converted, model.backbone, model.neck)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.extract_feat(x)['s16'], encoder(x), atol=1e-5, rtol=0)


def test_a_file_that_does_not_fit_raises_naming_keys_and_loads_nothing(tmp_path):
    sd = convert_vitdet({'model': _detectron2_vitdet_state_dict(96, 3, 32)})
    model = _vitdet_segmentor(96, 3, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    missing = {k: v for k, v in sd.items() if k != 'backbone.blocks.1.norm2.bias'}
    with pytest.raises(ValueError, match=r"missing keys 1 \(first: 'blocks\.1\.norm2\.bias'\)"):
        load_backbone_checkpoint(missing, model.backbone, model.neck)
    extra = {**sd, 'backbone.blocks.0.attn.q_norm.weight': torch.ones(32)}
    with pytest.raises(ValueError, match=r"unexpected keys 1 \(first: 'blocks\.0\.attn\.q_norm"):
        load_backbone_checkpoint(extra, model.backbone, model.neck)
    no_neck_key = {k: v for k, v in sd.items() if k != 'neck.output.s8.norm.weight'}
    with pytest.raises(ValueError, match=r"SimpleFeaturePyramid neck: missing keys 1 \(first: "
                                         r"'output\.s8\.norm\.weight'\)"):
        load_backbone_checkpoint(no_neck_key, model.backbone, model.neck)
    with pytest.raises(ValueError, match='no neck'):
        load_backbone_checkpoint(sd, model.backbone, None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing was loaded
    path = tmp_path / 'partial.pth'
    torch.save(missing, path)
    model.backbone_checkpoint = str(path)
    with pytest.raises(ValueError, match='partial.pth does not fit the ViT backbone'):
        model.init_weights()


def test_what_backbones_declare_they_may_lack_or_drop():
    # Swin from a classification checkpoint: its output norms start fresh
    swin_cfg = dict(type='Swin', embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                    out_indices=(0, 1))
    source = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, embed_dim=16,
                               depths=(2, 2), num_heads=(1, 2), window_size=4, img_size=64)
    swin = MODELS.build(swin_cfg)
    report = load_backbone_checkpoint(convert_swin(source.state_dict()), swin)
    assert sorted(report.missing) == sorted(swin.checkpoint_optional_keys())
    # a ViTDet-style ViT (no final norm) from MAE's pretraining file: its final norm is dropped
    mae = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=1).state_dict()
    mae = {**mae, 'mask_token': torch.zeros(1, 1, 192)}
    vit = _plain_vit(224)
    report = load_backbone_checkpoint(convert_mae(mae), vit)
    assert report.unexpected == ['norm.weight', 'norm.bias'] and not report.missing
    # ... but a ViT that has a final norm needs one: a fine-tuned MAE file (fc_norm) lacks it
    finetuned = {k.replace('norm.', 'fc_norm.') if k.startswith('norm.') else k: v
                 for k, v in mae.items()}
    with pytest.raises(ValueError, match=r"missing keys 2 \(first: 'norm\.weight'\)"):
        load_backbone_checkpoint(convert_mae(finetuned), _plain_vit(224, final_norm=True))


def test_training_checkpoint_gives_its_backbone(tmp_path):
    """A densevit training checkpoint (whole model under 'state_dict'): backbone.* is read, the
    head's keys are not."""
    cfg = dict(type='Segmentor', backbone=dict(type='ViT', arch='tiny', depth=1, window_size=0,
                                               global_attn_indexes=(), use_rel_pos=False,
                                               pretrain_img_size=64),
               decode_head=dict(type='FCNHead', in_features=('s16',), num_classes=3, channels=8))
    trained = MODELS.build(cfg)
    path = tmp_path / 'iter_10.pth'
    torch.save({'state_dict': trained.state_dict(), 'meta': {'iter': 10}}, path)
    fresh = MODELS.build(dict(cfg, backbone_checkpoint=str(path)))
    fresh.init_weights()
    for k, v in trained.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[k], v), k
    assert not torch.equal(fresh.decode_head.conv_seg.weight, trained.decode_head.conv_seg.weight)
