"""Converters of densevit.checkpoint.vit on state dicts made by the reference packages themselves
(timm, segment_anything) or, for detectron2 and the official Segmenter (not installable here), by
hand with the names and shapes of their source (detectron2's ViT / SimpleFeaturePyramid,
rstrudel/segmenter's VisionTransformer / DecoderLinear / MaskTransformer). Features are compared
with timm's ViT (with its class token, LayerScale, position embedding resampled by timm's
``resample_abs_pos_embed``)."""
from __future__ import annotations

import pytest
import timm
import torch
from mmengine.config import Config
from segment_anything import sam_model_registry
from timm.layers import resample_abs_pos_embed

from densevit.checkpoint import get_converter
from densevit.checkpoint.loading import load_state_dict
from densevit.checkpoint.vit import (CONVERTERS, convert_mae, convert_sam, convert_segmenter,
                                     convert_timm_vit, convert_vitdet)
from densevit.models.backbones.vit import ViT
from densevit.models.tasks.image_encoder import ImageEncoder
from densevit.registry import MODELS

SAM_CONFIG = 'configs/backbones/vit-b_sam-encoder.py'


def _seeded(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (timm zero-inits tokens, LayerScale starts at 1e-5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith('gamma'):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _timm_patch_tokens(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's final-normed patch tokens (prefix tokens dropped) as a (B, C, h, w) map."""
    with torch.no_grad():
        tokens = ref.forward_features(x)[:, ref.num_prefix_tokens:]
    patch = ref.patch_embed.patch_size
    h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, N, C) -> (B, C, h, w)


def test_every_vit_kind_is_registered_and_converts():
    """Each kind reachable by name converts a state dict of its own layout (no set comparison:
    a kind that exists but fails to convert its own layout would pass one)."""
    timm_sd = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=1).state_dict()
    for kind in ('timm_vit', 'mae', 'deit'):
        assert get_converter(kind)(timm_sd)['blocks.0.attn.qkv.weight'] is \
            timm_sd['blocks.0.attn.qkv.weight']
    assert 'cls_token' in get_converter('segmenter')(timm_sd)
    assert CONVERTERS['segmenter'] is convert_segmenter


@pytest.fixture(scope='module')
def sam_and_ours():
    torch.manual_seed(0)
    sam = sam_model_registry['vit_b']().eval()
    with torch.no_grad():  # SAM zero-inits its rel-pos tables; make them matter
        for name, p in sam.image_encoder.named_parameters():
            if 'rel_pos' in name:
                p.normal_(std=0.1)
    ours = MODELS.build(Config.fromfile(SAM_CONFIG).model).eval()
    report = load_state_dict(ours, convert_sam(sam.state_dict()), log=False)
    return sam, ours, report


@pytest.mark.slow
def test_sam_converted_loads_cleanly_with_sam_param_count(sam_and_ours):
    sam, ours, report = sam_and_ours
    assert isinstance(ours, ImageEncoder)
    assert report.clean and not report.resized, str(report)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in sam.image_encoder.parameters())
    assert round(n_ours / 1e6, 1) == 89.7
    # the image encoder alone converts the same way
    assert convert_sam(sam.image_encoder.state_dict()).keys() == ours.state_dict().keys()
    kept = convert_sam(sam.state_dict(), keep_prompt_parts=True)
    assert any(k.startswith('mask_decoder.') for k in kept)
    assert any(k.startswith('prompt_encoder.') for k in kept)


@pytest.mark.slow
def test_sam_encoder_output_equals_segment_anything(sam_and_ours):
    sam, ours, _ = sam_and_ours
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        ref = sam.image_encoder(x)
        out = ours(x)
    assert out['s16'].shape == ref.shape == (1, 256, 64, 64)
    assert (out['s16'] - ref).abs().max().item() < 1e-4


@pytest.mark.slow
def test_timm_vit_b_converts_and_loads():
    ref = timm.create_model('vit_base_patch16_224', pretrained=False)
    sd = ref.state_dict()
    converted = convert_timm_vit(sd)
    assert not any(k.startswith(('cls_token', 'head.', 'fc_norm')) for k in converted)
    # (1, 1 + 196, C): the class-token row is dropped, the rest is the 14x14 grid row by row
    torch.testing.assert_close(converted['pos_embed'],
                               sd['pos_embed'][:, 1:].reshape(1, 14, 14, 768))
    ours = ViT(arch='base', window_size=0, use_rel_pos=False, final_norm=True,
               pretrain_img_size=224)
    report = load_state_dict(ours, converted, log=False)
    assert report.clean and not report.resized, str(report)
    # at another pretraining grid the loader resizes the position embedding as timm resamples it
    ours_384 = ViT(arch='base', depth=1, global_attn_indexes=(), window_size=0,
                   use_rel_pos=False, pretrain_img_size=384)
    report = load_state_dict(ours_384, convert_timm_vit(sd), log=False)
    assert report.resized['pos_embed'] == ((1, 14, 14, 768), (1, 24, 24, 768))
    expected = resample_abs_pos_embed(sd['pos_embed'], [24, 24], num_prefix_tokens=1,
                                      interpolation='bicubic', antialias=False)[:, 1:]
    torch.testing.assert_close(ours_384.pos_embed.detach(), expected.reshape(1, 24, 24, 768))
    prefixed = convert_timm_vit(sd, prefix='backbone.')
    assert all(k.startswith('backbone.') for k in prefixed)


def test_deit_distilled_drops_both_tokens():
    ref = timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False, depth=2)
    sd = ref.state_dict()
    converted = CONVERTERS['deit']({'model': sd})  # official files wrap weights in 'model'
    assert not any(k.startswith(('dist_token', 'head_dist.')) for k in converted)
    torch.testing.assert_close(converted['pos_embed'],
                               sd['pos_embed'][:, 2:].reshape(1, 14, 14, 192))
    ours = ViT(arch='tiny', depth=2, global_attn_indexes=(), window_size=0, use_rel_pos=False,
               final_norm=True, pretrain_img_size=224)
    report = load_state_dict(ours, converted, log=False)
    assert report.clean and not report.resized, str(report)


def test_mae_drops_decoder():
    """MAE's pretraining checkpoint = timm ViT names + decoder_* and mask_token."""
    enc = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=0,
                            depth=2).state_dict()
    sd = dict(enc)
    sd['mask_token'] = torch.zeros(1, 1, 128)
    sd['decoder_embed.weight'] = torch.zeros(128, 192)
    sd['decoder_pos_embed'] = torch.zeros(1, 197, 128)
    sd['decoder_blocks.0.attn.qkv.weight'] = torch.zeros(384, 128)
    sd['decoder_pred.weight'] = torch.zeros(768, 128)
    converted = convert_mae({'model': sd})
    assert converted.keys() == convert_timm_vit(enc).keys()
    ours = ViT(arch='tiny', depth=2, global_attn_indexes=(), window_size=0, use_rel_pos=False,
               final_norm=True, pretrain_img_size=224)
    assert load_state_dict(ours, converted, log=False).clean


def _detectron2_vitdet_state_dict(dim: int, depth: int, out: int) -> dict[str, torch.Tensor]:
    """ViTDet names and shapes as detectron2 builds them: ``backbone.net`` = ViT (pos_embed with a
    class-token row at pretrain 224 -> 1 + 14*14), ``backbone.simfp_{2..5}`` = Sequentials of
    [deconv, LayerNorm, GELU, deconv | deconv | - | maxpool] + Conv2d(1x1, norm) + Conv2d(3x3,
    norm), convs bias-free with LN; plus detector parts the converter must drop."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    head = dim // 3
    sd = {'backbone.net.pos_embed': r(1, 1 + 14 * 14, dim),
          'backbone.net.patch_embed.proj.weight': r(dim, 3, 16, 16),
          'backbone.net.patch_embed.proj.bias': r(dim)}
    for i in range(depth):
        p = f'backbone.net.blocks.{i}.'
        size = 14 if i != depth - 1 else 64  # last block global at 1024 / 16
        sd.update({p + 'norm1.weight': r(dim), p + 'norm1.bias': r(dim),
                   p + 'attn.qkv.weight': r(3 * dim, dim), p + 'attn.qkv.bias': r(3 * dim),
                   p + 'attn.rel_pos_h': r(2 * size - 1, head),
                   p + 'attn.rel_pos_w': r(2 * size - 1, head),
                   p + 'attn.proj.weight': r(dim, dim), p + 'attn.proj.bias': r(dim),
                   p + 'norm2.weight': r(dim), p + 'norm2.bias': r(dim),
                   p + 'mlp.fc1.weight': r(4 * dim, dim), p + 'mlp.fc1.bias': r(4 * dim),
                   p + 'mlp.fc2.weight': r(dim, 4 * dim), p + 'mlp.fc2.bias': r(dim)})
    sd.update({'backbone.simfp_2.0.weight': r(dim, dim // 2, 2, 2),
               'backbone.simfp_2.0.bias': r(dim // 2),
               'backbone.simfp_2.1.weight': r(dim // 2), 'backbone.simfp_2.1.bias': r(dim // 2),
               'backbone.simfp_2.3.weight': r(dim // 2, dim // 4, 2, 2),
               'backbone.simfp_2.3.bias': r(dim // 4),
               'backbone.simfp_3.0.weight': r(dim, dim // 2, 2, 2),
               'backbone.simfp_3.0.bias': r(dim // 2)})
    for stage, first, in_ch in ((2, 4, dim // 4), (3, 1, dim // 2), (4, 0, dim), (5, 1, dim)):
        p = f'backbone.simfp_{stage}.'
        sd.update({p + f'{first}.weight': r(out, in_ch, 1, 1),
                   p + f'{first}.norm.weight': r(out), p + f'{first}.norm.bias': r(out),
                   p + f'{first + 1}.weight': r(out, out, 3, 3),
                   p + f'{first + 1}.norm.weight': r(out), p + f'{first + 1}.norm.bias': r(out)})
    sd.update({'pixel_mean': r(3, 1, 1), 'pixel_std': r(3, 1, 1),
               'proposal_generator.rpn_head.conv.weight': r(out, out, 3, 3),
               'roi_heads.box_predictor.cls_score.weight': r(81, 1024)})
    return sd


def test_vitdet_converter_round_trip():
    dim, depth, out = 96, 3, 32
    sd = _detectron2_vitdet_state_dict(dim, depth, out)
    model = ImageEncoder(
        backbone=dict(type='ViT', arch='tiny', embed_dim=dim, depth=depth, num_heads=3,
                      global_attn_indexes=(depth - 1,), window_size=14, img_size=1024,
                      pretrain_img_size=224),
        neck=dict(type='SimpleFeaturePyramid', out_channels=out, top_block=True))
    converted = convert_vitdet({'model': sd, '__author__': 'detectron2'})
    report = load_state_dict(model, converted, log=False)
    assert report.clean and not report.resized, str(report)
    # every backbone / pyramid tensor lands somewhere, and nothing else is kept
    n_backbone = sum(k.startswith('backbone.') for k in sd)
    assert len(converted) == n_backbone
    own = model.state_dict()
    torch.testing.assert_close(own['backbone.pos_embed'],
                               sd['backbone.net.pos_embed'][:, 1:].reshape(1, 14, 14, dim))
    expected = {  # densevit name -> detectron2 name
        'backbone.blocks.2.attn.rel_pos_h': 'backbone.net.blocks.2.attn.rel_pos_h',
        'neck.resample.s4.0.weight': 'backbone.simfp_2.0.weight',
        'neck.resample.s4.1.bias': 'backbone.simfp_2.1.bias',
        'neck.resample.s4.3.weight': 'backbone.simfp_2.3.weight',
        'neck.lateral.s4.conv.weight': 'backbone.simfp_2.4.weight',
        'neck.lateral.s4.norm.weight': 'backbone.simfp_2.4.norm.weight',
        'neck.output.s4.norm.bias': 'backbone.simfp_2.5.norm.bias',
        'neck.resample.s8.0.bias': 'backbone.simfp_3.0.bias',
        'neck.output.s8.conv.weight': 'backbone.simfp_3.2.weight',
        'neck.lateral.s16.conv.weight': 'backbone.simfp_4.0.weight',
        'neck.output.s16.norm.weight': 'backbone.simfp_4.1.norm.weight',
        'neck.lateral.s32.conv.weight': 'backbone.simfp_5.1.weight',
        'neck.output.s32.conv.weight': 'backbone.simfp_5.2.weight',
    }
    for ours_name, d2_name in expected.items():
        torch.testing.assert_close(own[ours_name], sd[d2_name], rtol=0, atol=0)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert sorted(feats) == ['s16', 's32', 's4', 's64', 's8']


def test_vitdet_rejects_unknown_stage():
    with pytest.raises(ValueError, match='simfp stage 6'):
        convert_vitdet({'backbone.simfp_6.0.weight': torch.zeros(1)})


# ---------------------------------------------------------------- what has no place is refused

@pytest.mark.parametrize('model_name,kwargs,words', [
    ('vit_small_patch16_224', dict(qk_norm=True), 'q_norm'),  # q / k norms
    ('eva02_tiny_patch14_224', dict(), 'q_bias'),  # EVA: separate q / v biases, SwiGLU
    ('vit_base_patch16_clip_224', dict(), 'norm_pre'),  # CLIP's pre-norm
])
def test_timm_vit_refuses_keys_without_a_place(model_name, kwargs, words):
    sd = timm.create_model(model_name, pretrained=False, depth=1, **kwargs).state_dict()
    with pytest.raises(ValueError, match=f'no place in densevit ViT.*{words}'):
        convert_timm_vit(sd)


def test_register_tokens_are_refused_for_a_class_token_vit():
    sd = timm.create_model('vit_small_patch14_reg4_dinov2', pretrained=False, depth=1,
                           img_size=56).state_dict()
    assert 'reg_token' not in convert_timm_vit(sd)  # ViTDet-style use drops all prefix tokens
    with pytest.raises(ValueError, match='reg_token'):
        convert_segmenter(sd)


# ---------------------------------------------------------------- LayerScale and class tokens

@pytest.mark.parametrize('model_name,img,patch,extra', [
    # DeiT-III: LayerScale, class token without a position entry (no_embed_class)
    ('deit3_small_patch16_224', 64, 16, dict()),
    # DINOv2: LayerScale, class token with a position entry, patch 14
    ('vit_small_patch14_dinov2', 56, 14, dict()),
])
def test_layer_scale_and_class_token_match_timm(model_name, img, patch, extra):
    ref = _seeded(timm.create_model(model_name, pretrained=False, depth=2, img_size=img,
                                    **extra))
    converted = convert_timm_vit(ref.state_dict(), keep_class_token=True)
    assert {'blocks.0.ls1.gamma', 'blocks.1.ls2.gamma', 'cls_token', 'cls_pos_embed'} <= set(
        converted)
    ours = ViT(arch='small', depth=2, global_attn_indexes=(), window_size=0, use_rel_pos=False,
               final_norm=True, class_token=True, layer_scale=1e-5, patch_size=patch,
               img_size=img, pretrain_img_size=img).eval()
    report = load_state_dict(ours, converted, log=False)
    assert report.clean and not report.resized, str(report)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        out = ours(x)[f's{patch}']
    diff = (out - _timm_patch_tokens(ref, x)).abs().max().item()
    assert diff < 1e-4, diff
    # without keep_class_token the tokens are dropped, and LayerScale still has its place
    plain = convert_timm_vit(ref.state_dict())
    assert 'cls_token' not in plain and 'blocks.0.ls1.gamma' in plain


def _timm_vit_tiny(img: int, depth: int = 2, seed: int = 0) -> torch.nn.Module:
    return _seeded(timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=depth,
                                     img_size=img), seed)


@pytest.mark.parametrize('size', [(96, 80), (48, 48)])
def test_class_token_vit_equals_timm_with_bilinear_pos_embed(size):
    """Segmenter's encoder: the class token through every block and the final norm, dropped from
    the map; the 4x4 position grid resized bilinearly to the input grid (larger, and smaller).
    Reference: a timm ViT at the input size whose pos_embed is timm's resample_abs_pos_embed of
    the same table (bilinear, no antialias: Segmenter's resize_pos_embed)."""
    source = _timm_vit_tiny(64)
    ours = ViT(arch='tiny', depth=2, global_attn_indexes=(), window_size=0, use_rel_pos=False,
               final_norm=True, class_token=True, pos_embed_interpolation='bilinear',
               img_size=64, pretrain_img_size=64).eval()
    report = load_state_dict(ours, convert_segmenter(source.state_dict()), log=False)
    assert report.clean and not report.resized, str(report)
    grid = [size[0] // 16, size[1] // 16]
    ref = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=2,
                            img_size=size).eval()
    sd = dict(source.state_dict())
    sd['pos_embed'] = resample_abs_pos_embed(sd['pos_embed'], grid, num_prefix_tokens=1,
                                             interpolation='bilinear', antialias=False)
    ref.load_state_dict(sd)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = ours(x)['s16']
    diff = (out - _timm_patch_tokens(ref, x)).abs().max().item()
    assert diff < 1e-4, diff


def _official_segmenter(encoder: dict, d_model: int, n_cls: int, decoder: str, n_layers: int = 2,
                        seed: int = 0) -> dict:
    """rstrudel/segmenter's checkpoint layout ({'model': Segmenter.state_dict()}): ``encoder.*``
    = its VisionTransformer (timm's names, ``cls_token``, ``pos_embed`` with the class entry,
    ``head``), ``decoder.*`` = DecoderLinear (``head``) or MaskTransformer (``blocks.<i>`` of
    norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, ``cls_emb``, ``proj_dec``,
    ``proj_patch``, ``proj_classes``, ``decoder_norm``, ``mask_norm``), random values."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return 0.05 * torch.randn(*shape, generator=gen)

    sd = {f'encoder.{k}': v for k, v in encoder.items()}
    if decoder == 'linear':
        sd.update({'decoder.head.weight': r(n_cls, d_model), 'decoder.head.bias': r(n_cls)})
        return {'model': sd}
    def linear(name, out_dim, in_dim):
        sd.update({f'{name}.weight': r(out_dim, in_dim), f'{name}.bias': r(out_dim)})

    def norm(name, dim):
        sd.update({f'{name}.weight': 1 + r(dim), f'{name}.bias': r(dim)})

    d = d_model
    for i in range(n_layers):
        p = f'decoder.blocks.{i}.'
        norm(p + 'norm1', d)
        norm(p + 'norm2', d)
        linear(p + 'attn.qkv', 3 * d, d)
        linear(p + 'attn.proj', d, d)
        linear(p + 'mlp.fc1', 4 * d, d)
        linear(p + 'mlp.fc2', d, 4 * d)
    linear('decoder.proj_dec', d, d)
    norm('decoder.decoder_norm', d)
    norm('decoder.mask_norm', n_cls)
    sd.update({'decoder.cls_emb': r(1, n_cls, d), 'decoder.proj_patch': r(d, d),
               'decoder.proj_classes': r(d, d)})
    return {'model': sd}


@pytest.mark.parametrize('decoder', ['linear', 'mask'])
def test_official_segmenter_checkpoint_loads_one_to_one(decoder):
    encoder = _timm_vit_tiny(64).state_dict()  # fine-tuned at 64: a 4x4 grid + class entry
    official = _official_segmenter(encoder, 192, 5, decoder)
    converted = convert_segmenter(official)
    head = (dict(type='SegmenterLinearHead') if decoder == 'linear' else
            dict(type='SegmenterMaskHead', channels=192, num_heads=3, num_layers=2))
    model = MODELS.build(dict(
        type='Segmentor',
        backbone=dict(type='ViT', arch='tiny', depth=2, img_size=64, pretrain_img_size=64,
                      window_size=0, global_attn_indexes=(), use_rel_pos=False, final_norm=True,
                      class_token=True, pos_embed_interpolation='bilinear'),
        decode_head=dict(head, in_features=('s16',), num_classes=5, input_norm=False))).eval()
    report = load_state_dict(model, converted, strict=True, log=False)
    assert not report.resized
    # one to one: every official tensor except the encoder's classifier, by value
    own = model.state_dict()
    official = official['model']
    expected = {'backbone.cls_token': 'encoder.cls_token',
                'backbone.blocks.1.mlp.fc2.weight': 'encoder.blocks.1.mlp.fc2.weight',
                'backbone.norm.bias': 'encoder.norm.bias'}
    if decoder == 'linear':
        expected['decode_head.head.weight'] = 'decoder.head.weight'
    else:
        expected.update({'decode_head.blocks.1.attn.qkv.weight': 'decoder.blocks.1.attn.qkv.weight',
                         'decode_head.cls_emb': 'decoder.cls_emb',
                         'decode_head.proj_classes': 'decoder.proj_classes',
                         'decode_head.mask_norm.weight': 'decoder.mask_norm.weight'})
    for ours_name, name in expected.items():
        assert torch.equal(own[ours_name], official[name]), ours_name
    pos = official['encoder.pos_embed']  # (1, 1 + 16, C)
    assert torch.equal(own['backbone.cls_pos_embed'], pos[:, :1])
    assert torch.equal(own['backbone.pos_embed'], pos[:, 1:].reshape(1, 4, 4, 192))
    n_official = sum(v.numel() for k, v in official.items() if not k.startswith('encoder.head.'))
    assert n_official == sum(v.numel() for v in own.values())
    with pytest.raises(ValueError, match='outside encoder'):
        convert_segmenter({'model': {**official, 'criterion.weight': torch.zeros(1)}})


def test_distilled_class_tokens_match_timm():
    """DeiT-distilled encoders (Segmenter's seg_*_deit_* models): class and distillation tokens
    both carried through the blocks, with their position entries."""
    ref = _seeded(timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False,
                                    depth=2, img_size=64))
    converted = convert_segmenter(ref.state_dict())
    assert converted['cls_pos_embed'].shape == (1, 2, 192)
    ours = ViT(arch='tiny', depth=2, global_attn_indexes=(), window_size=0, use_rel_pos=False,
               final_norm=True, class_token=True, dist_token=True, img_size=64,
               pretrain_img_size=64).eval()
    assert load_state_dict(ours, converted, strict=True, log=False).clean
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ours(x)['s16']
    assert (out - _timm_patch_tokens(ref, x)).abs().max() < 1e-4
