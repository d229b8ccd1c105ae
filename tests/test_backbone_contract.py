"""Every registered backbone, with every neck it fits, keeps the feature contract: the names,
channels and strides it declares are what it returns, at a non-square size that no window,
patch or kernel divides, and gradients reach every backbone parameter."""
import pytest
import torch

import densevit.models  # noqa: F401  (registers the modules)
from densevit.models.contract import check_features
from densevit.registry import MODELS

SIZE = (96, 80)  # not a multiple of 32, of windows 7/14 at any level, or square

# Small settings of every backbone, so the matrix stays fast.
BACKBONES = {
    'vit': dict(type='ViT', arch='tiny', embed_dim=64, depth=2, num_heads=2, window_size=4,
                global_attn_indexes=(1,), pretrain_img_size=64, img_size=64),
    'vit-plain': dict(type='ViT', arch='tiny', embed_dim=64, depth=2, num_heads=2, window_size=0,
                      global_attn_indexes=(), use_rel_pos=False, pretrain_img_size=64),
    'vit-segmenter': dict(type='ViT', arch='tiny', embed_dim=64, depth=2, num_heads=2,
                          window_size=0, global_attn_indexes=(), use_rel_pos=False,
                          final_norm=True, class_token=True, layer_scale=0.1,
                          pos_embed_interpolation='bilinear', pretrain_img_size=64),
    'swin': dict(type='Swin', arch='tiny', embed_dim=32, depths=(2, 2, 2, 2),
                 num_heads=(1, 2, 2, 4)),
    'swin-mask-padding': dict(type='Swin', arch='tiny', embed_dim=32, depths=(2, 2, 2, 2),
                              num_heads=(1, 2, 2, 4), mask_padding=True),
    'nat': dict(type='NAT', arch='mini', embed_dim=16, depths=(1, 1, 2, 1),
                num_heads=(1, 1, 2, 2)),
    'dinat': dict(type='DiNAT', arch='mini', embed_dim=16, depths=(1, 2, 2, 1),
                  num_heads=(1, 1, 2, 2)),
    'timm-resnet18': dict(type='TimmBackbone', model_name='resnet18'),
    'timm-vit': dict(type='TimmBackbone', model_name='vit_tiny_patch16_224',
                     model_kwargs=dict(depth=2)),
}
# Necks for single-map (plain ViT) backbones; hierarchical ones feed heads directly.
SINGLE_MAP_NECKS = {
    'none': None,
    'sfp': dict(type='SimpleFeaturePyramid', out_channels=32, top_block=True),
    'sam': dict(type='SamNeck'),
}
# Necks for hierarchical (multi-map) backbones (reading every map, so gradients reach them all).
MULTI_MAP_NECKS = {
    'channel-mapper': dict(type='ChannelMapper', in_features=('s4', 's8', 's16', 's32'),
                           out_channels=32, num_extra_levels=1),
}
SINGLE_MAP_BACKBONES = ('vit', 'vit-plain', 'vit-segmenter', 'timm-vit')


def _cases():
    for name, cfg in BACKBONES.items():
        for neck_name, neck in SINGLE_MAP_NECKS.items():
            if neck is not None and name not in SINGLE_MAP_BACKBONES:
                continue
            yield pytest.param(cfg, neck, id=f'{name}+{neck_name}')
        if name not in SINGLE_MAP_BACKBONES:
            for neck_name, neck in MULTI_MAP_NECKS.items():
                yield pytest.param(cfg, neck, id=f'{name}+{neck_name}')


@pytest.mark.parametrize('backbone_cfg,neck_cfg', list(_cases()))
def test_feature_contract(backbone_cfg, neck_cfg):
    torch.manual_seed(0)
    backbone = MODELS.build(backbone_cfg)
    images = torch.randn(2, 3, *SIZE)
    features = backbone(images)
    check_features(features, backbone.out_features, SIZE, backbone_cfg['type'])
    if neck_cfg is not None:
        neck = MODELS.build(neck_cfg, default_args=dict(input_shapes=backbone.out_features))
        features = neck(features)
        check_features(features, neck.out_features, SIZE, neck_cfg['type'])
    sum(f.square().mean() for f in features.values()).backward()
    # (a gradient can be exactly zero where a residual branch is zero-initialised, e.g. timm's
    # ResNet, so the check is that every parameter is reached, with finite values)
    no_grad = [n for n, p in backbone.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not no_grad, f'no gradient reaches {no_grad[:5]}'


@pytest.mark.parametrize('name', list(BACKBONES))
def test_layer_ids_cover_every_parameter(name):
    backbone = MODELS.build(BACKBONES[name])
    ids = {n: backbone.layer_id(n) for n, _ in backbone.named_parameters()}
    assert min(ids.values()) == 0
    assert max(ids.values()) <= backbone.num_layers + 1
    # every block depth in between is used: lr decay would skip a layer otherwise
    assert set(range(1, backbone.num_layers + 1)) <= set(ids.values())
