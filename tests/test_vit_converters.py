"""Converters of densevit.checkpoint.vit on state dicts made by the reference packages themselves
(timm, segment_anything) or, for detectron2 (not installable here), by hand with the names and
shapes of detectron2's ViT / SimpleFeaturePyramid source."""
from __future__ import annotations

import pytest
import timm
import torch
from mmengine.config import Config
from segment_anything import sam_model_registry

from densevit.checkpoint.loading import load_state_dict
from densevit.checkpoint.vit import (CONVERTERS, convert_mae, convert_sam, convert_timm_vit,
                                     convert_vitdet)
from densevit.models.backbones.vit import ViT
from densevit.models.tasks.image_encoder import ImageEncoder
from densevit.registry import MODELS

SAM_CONFIG = 'configs/backbones/vit-b_sam-encoder.py'


def test_registry_of_converters():
    assert set(CONVERTERS) == {'timm_vit', 'mae', 'deit', 'sam', 'vitdet'}


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
    # at another pretraining grid the loader resizes the position embedding
    ours_384 = ViT(arch='base', depth=1, global_attn_indexes=(), window_size=0,
                   use_rel_pos=False, pretrain_img_size=384)
    report = load_state_dict(ours_384, convert_timm_vit(sd), log=False)
    assert report.resized['pos_embed'] == ((1, 14, 14, 768), (1, 24, 24, 768))
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
