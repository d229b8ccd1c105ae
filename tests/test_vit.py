"""ViT backbone, window / rel-pos ops, SimpleFeaturePyramid, SamNeck and ImageEncoder.

References: timm's VisionTransformer and segment_anything's window / rel-pos code (written by
others), and hand-computed values.
"""
from __future__ import annotations

import math

import pytest
import timm
import torch
from segment_anything.modeling import image_encoder as sam_encoder
from timm.models.vision_transformer import VisionTransformer

from densevit.checkpoint.loading import load_state_dict
from densevit.checkpoint.vit import convert_timm_vit
from densevit.models.backbones.vit import ViT
from densevit.models.contract import FeatureSpec, check_features
from densevit.models.necks.sam_neck import SamNeck
from densevit.models.necks.simple_feature_pyramid import SimpleFeaturePyramid
from densevit.models.tasks.image_encoder import ImageEncoder
from densevit.ops.window import (decomposed_rel_pos_bias, get_rel_pos, rel_pos_attention,
                                 window_partition, window_unpartition)
from densevit.registry import MODELS


# ---------------------------------------------------------------- ops against segment_anything
@pytest.mark.parametrize('hw', [(14, 14), (17, 23)])
def test_window_partition_matches_sam_and_round_trips(hw):
    x = torch.randn(2, *hw, 5)
    ours, pad = window_partition(x, 7)
    ref, ref_pad = sam_encoder.window_partition(x, 7)
    assert pad == ref_pad == (math.ceil(hw[0] / 7) * 7, math.ceil(hw[1] / 7) * 7)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(window_unpartition(ours, 7, pad, hw), x, rtol=0, atol=0)


@pytest.mark.parametrize('q_size,k_size,table', [(7, 7, 13), (7, 7, 27), (4, 8, 15), (8, 4, 15)])
def test_get_rel_pos_matches_sam(q_size, k_size, table):
    rel_pos = torch.randn(table, 6)
    torch.testing.assert_close(get_rel_pos(q_size, k_size, rel_pos),
                               sam_encoder.get_rel_pos(q_size, k_size, rel_pos))


def test_decomposed_rel_pos_bias_matches_sam():
    b, (qh, qw), c = 3, (5, 6), 8
    q = torch.randn(b, qh * qw, c)
    rel_h, rel_w = torch.randn(2 * qh - 1, c), torch.randn(2 * qw - 1, c)
    attn = torch.zeros(b, qh * qw, qh * qw)  # SAM adds the bias to given logits; start from 0
    ref = sam_encoder.add_decomposed_rel_pos(attn, q, rel_h, rel_w, (qh, qw), (qh, qw))
    torch.testing.assert_close(decomposed_rel_pos_bias(q, rel_h, rel_w, (qh, qw), (qh, qw)), ref)
    # leading (batch, heads) dims are kept
    q4 = q.reshape(1, b, qh * qw, c)
    torch.testing.assert_close(decomposed_rel_pos_bias(q4, rel_h, rel_w, (qh, qw), (qh, qw))[0],
                               ref)


# ---------------------------------------------------------------- ViT
def test_arch_presets_and_overrides():
    vit = ViT(arch='large', depth=2, global_attn_indexes=(1,), window_size=0, use_rel_pos=False)
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (1024, 2, 16)
    with pytest.raises(ValueError, match='unknown ViT arch'):
        ViT(arch='giant')
    with pytest.raises(ValueError, match='outside the blocks'):
        ViT(arch='tiny', depth=2)  # tiny's global blocks (2, 5, 8, 11) do not exist
    with pytest.raises(TypeError):
        ViT(arch='tiny', widow_size=7)  # typos are errors, not silently ignored


@pytest.mark.slow
def test_vit_b_param_count_matches_timm_and_published():
    """ViT-B/16 is published as 86.6M params including the 1000-class head (768*1000 + 1000 =
    769k) and the class token (768 + one position-embedding row of 768)."""
    ours = ViT(arch='base', window_size=0, use_rel_pos=False, final_norm=True,
               pretrain_img_size=224)
    n_ours = sum(p.numel() for p in ours.parameters())
    ref = timm.create_model('vit_base_patch16_224', pretrained=False)
    n_ref = sum(p.numel() for p in ref.parameters())
    head, cls = 768 * 1000 + 1000, 768 + 768
    assert n_ours + head + cls == n_ref
    assert abs(n_ours + head - 86.6e6) / 86.6e6 < 0.01


def test_quickstart_vit_runs_on_small_non_square_images():
    vit = ViT(arch='tiny', window_size=0, use_rel_pos=False)
    feats = vit(torch.randn(2, 3, 64, 96))
    check_features(feats, vit.out_features, (64, 96), 'ViT')
    assert vit.out_features == {'s16': FeatureSpec(192, 16)}


def test_vit_matches_timm_vit_without_class_token():
    """timm's ViT with a class token lets that token take part in attention, so its patch tokens
    differ from a token-free backbone's by design. We compare with a timm ViT built without
    class token (same blocks otherwise), with weights converted by convert_timm_vit."""
    torch.manual_seed(0)
    ref = VisionTransformer(img_size=64, patch_size=16, embed_dim=192, depth=3, num_heads=3,
                            class_token=False, global_pool='avg', fc_norm=False,
                            num_classes=0).eval()
    with torch.no_grad():
        ref.pos_embed.normal_(std=0.5)
    kwargs = dict(arch='tiny', depth=3, global_attn_indexes=(), window_size=0,
                  use_rel_pos=False, pretrain_img_size=64)
    ours_norm = ViT(final_norm=True, **kwargs).eval()
    report = load_state_dict(ours_norm, convert_timm_vit(ref.state_dict()), log=False)
    assert report.clean and not report.resized
    ours = ViT(**kwargs).eval()  # no final norm: load reports only the final norm unexpected
    report = load_state_dict(ours, convert_timm_vit(ref.state_dict()), log=False)
    assert report.unexpected == ['norm.weight', 'norm.bias'] and not report.missing
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # (B, N, C) -> (B, C, 4, 4)
        tokens = ref.forward_features(x).transpose(1, 2).reshape(2, 192, 4, 4)
        torch.testing.assert_close(ours_norm(x)['s16'], tokens, rtol=1e-4, atol=1e-4)
        before_norm = ref.forward_intermediates(x, indices=1, norm=False,
                                                intermediates_only=True)[-1]
        torch.testing.assert_close(ours(x)['s16'], before_norm, rtol=1e-4, atol=1e-4)


def test_vit_matches_sam_blocks_small():
    """A small SAM-style encoder (windows that need padding, global blocks, rel pos) against
    segment_anything's ImageEncoderViT with the same weights, before its neck."""
    torch.manual_seed(0)
    ref = sam_encoder.ImageEncoderViT(img_size=160, patch_size=16, embed_dim=48, depth=4,
                                      num_heads=3, qkv_bias=True, use_rel_pos=True,
                                      window_size=4, global_attn_indexes=(1, 3),
                                      norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if 'rel_pos' in name or 'pos_embed' in name:
                p.normal_(std=0.5)
    ours = ViT(arch='tiny', embed_dim=48, depth=4, num_heads=3, global_attn_indexes=(1, 3),
               window_size=4, img_size=160, pretrain_img_size=160).eval()
    sd = {k.replace('mlp.lin', 'mlp.fc'): v for k, v in ref.state_dict().items()
          if not k.startswith('neck.')}
    ours.load_state_dict(sd)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        tokens = ref.patch_embed(x) + ref.pos_embed
        for blk in ref.blocks:
            tokens = blk(tokens)
        torch.testing.assert_close(ours(x)['s16'], tokens.permute(0, 3, 1, 2), rtol=1e-4,
                                   atol=1e-4)


def test_non_multiple_input_is_padded():
    """SAM settings (window 14, rel pos, pos embed at 1024) on a tiny width at 1000x760: the
    input is zero-padded to 1008x768, so the output is ceil(H / 16) and equals the output for
    the explicitly padded image."""
    vit = ViT(arch='tiny', depth=2, global_attn_indexes=(1,), img_size=1024,
              pretrain_img_size=1024, window_size=14).eval()
    x = torch.randn(1, 3, 1000, 760)
    with torch.no_grad():
        out = vit(x)['s16']
        padded = vit(torch.nn.functional.pad(x, (0, 8, 0, 8)))['s16']
    assert out.shape == (1, 192, 63, 48)
    torch.testing.assert_close(out, padded, rtol=0, atol=0)


def test_pos_embed_resized_bicubically_only_when_needed():
    vit = ViT(arch='tiny', depth=1, global_attn_indexes=(), window_size=0, use_rel_pos=False,
              pretrain_img_size=64)
    assert vit.abs_pos((4, 4)) is vit.pos_embed
    # (1, 4, 4, C) -> (1, C, 4, 4) -> bicubic -> (1, 6, 8, C), as ViTDet's get_abs_pos
    expected = torch.nn.functional.interpolate(vit.pos_embed.permute(0, 3, 1, 2), size=(6, 8),
                                               mode='bicubic').permute(0, 2, 3, 1)
    torch.testing.assert_close(vit.abs_pos((6, 8)), expected)


def test_layer_id_and_no_weight_decay():
    vit = ViT(arch='tiny', depth=4, global_attn_indexes=(1, 3), window_size=7, final_norm=True)
    assert vit.num_layers == 4
    assert vit.layer_id('patch_embed.proj.weight') == 0
    assert vit.layer_id('pos_embed') == 0
    assert vit.layer_id('blocks.0.attn.qkv.weight') == 1
    assert vit.layer_id('blocks.3.mlp.fc2.bias') == 4
    assert vit.layer_id('norm.weight') == 5
    assert {vit.layer_id(n) for n, _ in vit.named_parameters()} == {0, 1, 2, 3, 4, 5}
    nwd = vit.no_weight_decay()
    assert nwd == {'pos_embed'} | {f'blocks.{i}.attn.rel_pos_{a}' for i in range(4)
                                   for a in 'hw'}
    # tables: window blocks sized for the window, global blocks for img_size / patch (64)
    assert vit.blocks[0].attn.rel_pos_h.shape == (13, 64)
    assert vit.blocks[1].attn.rel_pos_h.shape == (127, 64)


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    plain = ViT(arch='tiny', depth=2, global_attn_indexes=(1,), window_size=2, img_size=64,
                drop_path_rate=0.0)
    cp = ViT(arch='tiny', depth=2, global_attn_indexes=(1,), window_size=2, img_size=64,
             drop_path_rate=0.0, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 48)
    for model in (plain, cp):
        model(x)['s16'].square().sum().backward()
    torch.testing.assert_close(cp.blocks[0].attn.qkv.weight.grad,
                               plain.blocks[0].attn.qkv.weight.grad)


# ---------------------------------------------------------------- necks and ImageEncoder
@pytest.mark.parametrize('image_size', [(64, 64), (128, 192)])
def test_simple_feature_pyramid_contract(image_size):
    vit = ViT(arch='tiny', depth=1, global_attn_indexes=(), window_size=0, use_rel_pos=False)
    neck = SimpleFeaturePyramid(input_shapes=vit.out_features, out_channels=32, top_block=True)
    assert {k: v.stride for k, v in neck.out_features.items()} == {
        's4': 4, 's8': 8, 's16': 16, 's32': 32, 's64': 64}
    feats = neck(vit(torch.randn(1, 3, *image_size)))
    check_features(feats, neck.out_features, image_size, 'SimpleFeaturePyramid')
    # s64 is a stride-2 subsample of s32 (ViTDet's LastLevelMaxPool, kernel 1)
    torch.testing.assert_close(feats['s64'], feats['s32'][:, :, ::2, ::2])


@pytest.mark.parametrize('image_size', [(64, 64), (72, 120)])
def test_simple_feature_pyramid_from_a_patch8_vit(image_size):
    """A patch-8 ViT's s8 map gives s4..s32; s32 is two 2x2 max-pools of the s8 tokens."""
    vit = ViT(arch='tiny', depth=1, patch_size=8, global_attn_indexes=(), window_size=0,
              use_rel_pos=False)
    neck = SimpleFeaturePyramid(input_shapes=vit.out_features, in_feature='s8', out_channels=32,
                                scale_factors=(2.0, 1.0, 0.5, 0.25))
    assert {k: v.stride for k, v in neck.out_features.items()} == {
        's4': 4, 's8': 8, 's16': 16, 's32': 32}
    x = torch.randn(1, 3, *image_size)
    tokens = vit(x)['s8']
    feats = neck({'s8': tokens})
    check_features(feats, neck.out_features, image_size, 'SimpleFeaturePyramid')
    pooled = torch.nn.functional.max_pool2d(tokens, 4, 4, ceil_mode=True)
    torch.testing.assert_close(feats['s32'], neck.output['s32'](neck.lateral['s32'](pooled)))


def test_simple_feature_pyramid_layers_and_errors():
    shapes = {'s16': FeatureSpec(64, 16)}
    neck = SimpleFeaturePyramid(input_shapes=shapes, out_channels=16,
                                scale_factors=(2.0, 1.0))
    assert list(neck.out_features) == ['s8', 's16']
    assert neck.resample['s8'][0].out_channels == 32  # deconv to C/2
    assert neck.lateral['s8'].conv.bias is None and neck.output['s8'].conv.kernel_size == (3, 3)
    with pytest.raises(ValueError, match='must double'):
        SimpleFeaturePyramid(input_shapes=shapes, scale_factors=(4.0, 1.0))
    with pytest.raises(ValueError, match='not supported'):
        SimpleFeaturePyramid(input_shapes=shapes, scale_factors=(3.0,))
    with pytest.raises(KeyError, match="'s32' is not among"):
        SimpleFeaturePyramid(input_shapes=shapes, in_feature='s32')


def test_image_encoder_with_sam_neck_matches_sam_neck():
    torch.manual_seed(0)
    enc = ImageEncoder(backbone=dict(type='ViT', arch='tiny', depth=1, global_attn_indexes=(),
                                     window_size=0, use_rel_pos=False),
                       neck=dict(type='SamNeck', out_channels=32))
    assert isinstance(enc.neck, SamNeck) and enc.out_features == {'s16': FeatureSpec(32, 16)}
    assert isinstance(MODELS.build(dict(type='ImageEncoder', backbone=dict(
        type='ViT', arch='tiny', window_size=0), neck=None)).backbone, ViT)
    ref = torch.nn.Sequential(torch.nn.Conv2d(192, 32, 1, bias=False),
                              sam_encoder.LayerNorm2d(32),
                              torch.nn.Conv2d(32, 32, 3, padding=1, bias=False),
                              sam_encoder.LayerNorm2d(32))
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    ref_sd = ref.state_dict()
    enc.neck.load_state_dict({f'{n}.{k.split(".")[1]}': ref_sd[k] for k in ref_sd
                              for i, n in enumerate(['conv1', 'norm1', 'conv2', 'norm2'])
                              if k.split('.')[0] == str(i)})
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        out = enc(x)
        check_features(out, enc.out_features, (48, 64), 'ImageEncoder')
        torch.testing.assert_close(out['s16'], ref(enc.backbone(x)['s16']), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize('max_bias_elements', [1, 100, 1 << 30])
def test_rel_pos_attention_in_row_slices_equals_full_bias(max_bias_elements):
    q, k, v = (torch.randn(2, 3, 5 * 6, 8) for _ in range(3))
    rel_h, rel_w = torch.randn(9, 8), torch.randn(11, 8)
    bias = decomposed_rel_pos_bias(q, rel_h, rel_w, (5, 6), (5, 6))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(
        rel_pos_attention(q, k, v, rel_h, rel_w, (5, 6), (5, 6), max_bias_elements), expected)


def test_class_token_and_layer_scale_options():
    vit = ViT(arch='tiny', depth=2, global_attn_indexes=(), window_size=0, use_rel_pos=False,
              final_norm=True, class_token=True, dist_token=True, layer_scale=0.1,
              pretrain_img_size=64)
    assert vit.cls_token.shape == vit.dist_token.shape == (1, 1, 192)
    assert vit.cls_pos_embed.shape == (1, 2, 192)
    assert vit.blocks[1].ls2.gamma.shape == (192,)
    assert {vit.layer_id(n) for n in ('cls_token', 'dist_token', 'cls_pos_embed')} == {0}
    assert {'cls_token', 'dist_token', 'cls_pos_embed', 'pos_embed'} <= vit.no_weight_decay()
    assert vit.checkpoint_ignored_keys() == set()  # it has a final norm
    assert ViT(arch='tiny', depth=1, global_attn_indexes=()).checkpoint_ignored_keys() == {
        'norm.weight', 'norm.bias'}
    with pytest.raises(ValueError, match='global attention in every block'):
        ViT(arch='tiny', depth=2, global_attn_indexes=(1,), window_size=4, class_token=True)
    with pytest.raises(ValueError, match='use_rel_pos'):
        ViT(arch='tiny', depth=2, global_attn_indexes=(), window_size=0, use_rel_pos=True,
            class_token=True)
    with pytest.raises(ValueError, match='dist_token=True needs class_token'):
        ViT(arch='tiny', depth=1, global_attn_indexes=(), window_size=0, use_rel_pos=False,
            dist_token=True)
    with pytest.raises(ValueError, match='pos_embed_interpolation'):
        ViT(arch='tiny', depth=1, global_attn_indexes=(), pos_embed_interpolation='nearest')
