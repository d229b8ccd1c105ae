"""TimmBackbone: stride-named maps from timm models, checked against the timm models themselves."""
import pytest
import timm
import torch

from densevit.models.backbones.timm_backbone import TimmBackbone
from densevit.models.contract import check_features
from densevit.registry import MODELS


def _assert_layer_ids(backbone: TimmBackbone):
    """Ids follow depth: non-decreasing in parameter order, 0 for the stem, every id used."""
    ids = [backbone.layer_id(n) for n, _ in backbone.named_parameters()]
    assert ids[0] == 0 and ids == sorted(ids)
    assert set(ids) == set(range(backbone.num_layers + 1))


def test_resnet18_hierarchical():
    torch.manual_seed(0)
    backbone = MODELS.build(dict(type='TimmBackbone', model_name='resnet18')).eval()
    ref = timm.create_model('resnet18').eval()
    ref.load_state_dict({k[len('model.model.'):]: v for k, v in backbone.state_dict().items()},
                        strict=False)
    # channels and strides are timm's feature_info for the last four levels
    info = ref.feature_info[1:]
    assert backbone.out_features == {
        f's{i["reduction"]}': type(backbone.out_features['s4'])(i['num_chs'], i['reduction'])
        for i in info}
    assert {n: (s.channels, s.stride) for n, s in backbone.out_features.items()} == {
        's4': (64, 4), 's8': (128, 8), 's16': (256, 16), 's32': (512, 32)}
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        feats = backbone(x)
        expected = ref.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    check_features(feats, backbone.out_features, (128, 96), 'resnet18')
    for feat, exp in zip(feats.values(), expected):
        torch.testing.assert_close(feat, exp)
    # a size no stride divides: padded to 32, maps cropped to ceil(H / s)
    with torch.no_grad():
        check_features(backbone(torch.randn(1, 3, 70, 45)), backbone.out_features, (70, 45),
                       'resnet18')
    _assert_layer_ids(backbone)
    assert backbone.num_layers == 8  # stem + 2 blocks in each of 4 stages, as timm groups them
    assert backbone.layer_id('model.model.conv1.weight') == 0
    assert backbone.layer_id('model.model.layer4.1.conv2.weight') == 8
    with pytest.raises(ValueError, match='not a parameter'):
        backbone.layer_id('fc.weight')


def test_vit_tiny_plain_map_at_any_size():
    torch.manual_seed(0)
    backbone = TimmBackbone(model_name='vit_tiny_patch16_224').eval()
    assert backbone.plain
    assert {n: (s.channels, s.stride) for n, s in backbone.out_features.items()} == {
        's16': (192, 16)}
    ref = timm.create_model('vit_tiny_patch16_224', dynamic_img_size=True).eval()
    ref.load_state_dict({k[len('model.model.'):]: v for k, v in backbone.state_dict().items()},
                        strict=False)
    for size in [(224, 224), (320, 256)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            feat = backbone(x)
            # last block output, tokens only (the class token dropped), by hand from timm's model
            tokens = ref.blocks(ref._pos_embed(ref.patch_embed(x)))  # (B, 1 + h*w, C)
        check_features(feat, backbone.out_features, size, 'vit_tiny')
        h, w = size[0] // 16, size[1] // 16
        expected = tokens[:, 1:].reshape(1, h, w, 192).permute(0, 3, 1, 2)  # (B, C, h, w)
        torch.testing.assert_close(feat['s16'], expected, atol=1e-5, rtol=1e-5)
    _assert_layer_ids(backbone)
    assert backbone.num_layers == 12
    assert backbone.layer_id('model.model.pos_embed') == 0
    assert backbone.layer_id('model.model.blocks.11.mlp.fc2.weight') == 12
    assert backbone.no_weight_decay() == {'model.model.pos_embed', 'model.model.cls_token'}
    with pytest.raises(ValueError, match='out_indices must be None'):
        TimmBackbone(model_name='vit_tiny_patch16_224', out_indices=(3,))


def test_convnext_atto_and_out_indices():
    backbone = TimmBackbone(model_name='convnext_atto', out_indices=(1, 2),
                            model_kwargs=dict(drop_path_rate=0.1)).eval()
    assert {n: (s.channels, s.stride) for n, s in backbone.out_features.items()} == {
        's8': (80, 8), 's16': (160, 16)}
    with torch.no_grad():
        # convnext's stride-4 stem would floor 50 -> 12; the padding gives ceil
        check_features(backbone(torch.randn(2, 3, 50, 66)), backbone.out_features, (50, 66),
                       'convnext_atto')
    _assert_layer_ids(backbone)
    # stages 0-2 kept (2 + 2 + 6 blocks); timm groups a downsample with its stage's first block
    assert backbone.num_layers == 10
    assert backbone.layer_id('model.model.stages.1.downsample.1.weight') == 3
    assert backbone.layer_id('model.model.stages.1.blocks.0.conv_dw.weight') == 3
    assert backbone.layer_id('model.model.stages.2.blocks.5.mlp.fc2.weight') == 10


def test_checkpoint_path_and_bad_arguments(tmp_path):
    torch.manual_seed(1)
    ref = timm.create_model('resnet18')
    path = tmp_path / 'r18.pth'
    torch.save(ref.state_dict(), path)
    backbone = TimmBackbone(model_name='resnet18', checkpoint_path=str(path))
    torch.testing.assert_close(backbone.model.model.layer3[0].conv1.weight,
                               ref.layer3[0].conv1.weight)
    with pytest.raises(ValueError, match='no model'):
        TimmBackbone(model_name='resnet_does_not_exist')
    with pytest.raises(ValueError, match='set by TimmBackbone'):
        TimmBackbone(model_name='resnet18', model_kwargs=dict(features_only=False))


def test_resnet_runs_unpadded_and_convnext_padded():
    """A ResNet already gives ceil(H / s) maps, so it sees the image as it is (border features as
    the official code computes them); ConvNeXt's 4x4 stem floors, so it is padded."""
    torch.manual_seed(0)
    resnet = TimmBackbone(model_name='resnet18').eval()
    assert resnet._size_divisor == 1
    image = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        ours = resnet(image)
        reference = resnet.model(image)  # timm's own feature maps of the unpadded image
    for (name, feat), ref in zip(ours.items(), reference):
        torch.testing.assert_close(feat, ref)
    assert TimmBackbone(model_name='convnext_atto')._size_divisor == 32


def test_norm_eval_and_frozen_modules():
    """DETR's recipe: BatchNorm keeps its running statistics (eval mode, frozen affine) even in
    train mode, and the stem and first stage do not train; the state-dict keys stay BatchNorm's."""
    backbone = TimmBackbone(model_name='resnet18', norm_eval=True,
                            frozen_modules=('conv1', 'bn1', 'layer1'))
    backbone.train()
    norms = backbone._batch_norms()
    assert norms and not any(m.training for m in norms)
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert 'model.model.layer2.0.conv1.weight' in trainable
    assert not any(n.startswith(('model.model.conv1', 'model.model.layer1')) for n in trainable)
    assert 'model.model.bn1.num_batches_tracked' in backbone.state_dict()
    before = norms[0].running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(norms[0].running_mean, before)  # statistics not updated
    with pytest.raises(ValueError, match="'layer9'"):
        TimmBackbone(model_name='resnet18', frozen_modules=('layer9',))


def test_convnext_output_norms_and_unpadded_maps_as_mmseg_and_transformers():
    """``out_norm='LN2d'``: each returned map is layer-normalised over its channels (eps 1e-6)
    with its own affine parameters; ``pad_input=False``: the maps are timm's own of the unpadded
    image, floor(H / s) for ConvNeXt's stride-4 stem and stride-2 downsampling."""
    torch.manual_seed(0)
    backbone = TimmBackbone(model_name='convnext_atto', out_norm='LN2d', pad_input=False).eval()
    assert backbone._size_divisor == 1
    with torch.no_grad():
        for norm in backbone.out_norms.values():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    image = torch.randn(1, 3, 70, 99)
    with torch.no_grad():
        ours = backbone(image)
        raw = backbone.model.model.forward_intermediates(image, indices=[0, 1, 2, 3],
                                                         intermediates_only=True)
    assert [tuple(m.shape[-2:]) for m in ours.values()] == [(17, 24), (8, 12), (4, 6), (2, 3)]
    for (name, feat), ref in zip(ours.items(), raw):
        norm = backbone.out_norms[name]
        # (B, C, H, W) -> (B, H, W, C), layer norm over C, back
        expected = torch.nn.functional.layer_norm(
            ref.permute(0, 2, 3, 1), ref.shape[1:2], norm.weight, norm.bias, eps=1e-6,
        ).permute(0, 3, 1, 2)
        torch.testing.assert_close(feat, expected)
    # the norms are optional in a backbone checkpoint and sit above the last stage for lr decay
    assert backbone.checkpoint_optional_keys() == {
        f'out_norms.s{s}.{p}' for s in (4, 8, 16, 32) for p in ('weight', 'bias')}
    assert backbone.layer_id('out_norms.s32.weight') == backbone.num_layers + 1
    # the defaults are unchanged: no norms, the image padded to 32
    plain = TimmBackbone(model_name='convnext_atto')
    assert plain.out_norms is None and plain._size_divisor == 32
    assert not any(k.startswith('out_norms.') for k in plain.state_dict())
    with pytest.raises(ValueError, match="out_norm 'BN'.*LN2d"):
        TimmBackbone(model_name='convnext_atto', out_norm='BN')
