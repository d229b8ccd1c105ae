"""ChannelMapper (Deformable DETR's input_proj): declared levels, which map each extra level reads,
the layer recipe (1x1 / 3x3 stride-2 conv + GroupNorm(32), Xavier init) and config errors. The
shape contract on real backbones is in test_backbone_contract.py."""
import pytest
import torch
from torch import nn

import densevit.models  # noqa: F401  (registers the modules)
from densevit.models.contract import FeatureSpec, check_features
from densevit.registry import MODELS

SHAPES = {'s4': FeatureSpec(8, 4), 's8': FeatureSpec(16, 8), 's16': FeatureSpec(24, 16),
          's32': FeatureSpec(40, 32)}


def _features(size=(70, 90), batch=2):
    torch.manual_seed(0)
    h, w = size
    return {name: torch.randn(batch, spec.channels, -(-h // spec.stride), -(-w // spec.stride))
            for name, spec in SHAPES.items()}


def _mapper(**kwargs):
    return MODELS.build(dict(type='ChannelMapper', **kwargs),
                        default_args=dict(input_shapes=SHAPES))


def test_declared_levels_and_shapes():
    mapper = _mapper(out_channels=64, num_extra_levels=2)
    assert mapper.out_features == {'s8': FeatureSpec(64, 8), 's16': FeatureSpec(64, 16),
                                   's32': FeatureSpec(64, 32), 's64': FeatureSpec(64, 64),
                                   's128': FeatureSpec(64, 128)}
    check_features(mapper(_features()), mapper.out_features, (70, 90), 'ChannelMapper')
    assert list(_mapper(num_extra_levels=0).out_features) == ['s8', 's16', 's32']


def test_extra_levels_read_the_raw_coarsest_map_then_each_other():
    mapper = _mapper(out_channels=32, num_extra_levels=2)
    feats = _features()
    out = mapper(feats)
    first, second = mapper.extra['s64'], mapper.extra['s128']
    assert first.conv.in_channels == SHAPES['s32'].channels  # the backbone map, not its projection
    assert (first.conv.kernel_size, first.conv.stride) == ((3, 3), (2, 2))
    torch.testing.assert_close(out['s64'], first(feats['s32']))
    torch.testing.assert_close(out['s128'], second(out['s64']))
    for name in ('s8', 's16', 's32'):
        lateral = mapper.lateral[name]
        assert lateral.conv.kernel_size == (1, 1)
        torch.testing.assert_close(out[name], lateral(feats[name]))


def test_group_norm_and_xavier_init():
    mapper = _mapper(out_channels=64)
    for block in [*mapper.lateral.values(), *mapper.extra.values()]:
        assert isinstance(block.norm, nn.GroupNorm) and block.norm.num_groups == 32
        assert torch.count_nonzero(block.conv.bias) == 0
        fan_in = block.conv.in_channels * block.conv.kernel_size[0] * block.conv.kernel_size[1]
        fan_out = block.conv.out_channels * block.conv.kernel_size[0] * block.conv.kernel_size[1]
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert block.conv.weight.abs().max() <= bound


def test_config_errors_name_the_problem():
    with pytest.raises(KeyError, match="'s64'.*s16"):
        _mapper(in_features=('s16', 's64'))
    with pytest.raises(ValueError, match='fine to coarse'):
        _mapper(in_features=('s16', 's8'))
    with pytest.raises(ValueError, match='num_groups=32.*out_channels=48'):
        _mapper(out_channels=48)
    with pytest.raises(ValueError, match="'s64' collides"):  # a map misnamed for its stride
        MODELS.build(dict(type='ChannelMapper', in_features=('s64',), out_channels=32),
                     default_args=dict(input_shapes={'s64': FeatureSpec(8, 32)}))
    with pytest.raises(TypeError):
        _mapper(num_extra_level=1)  # a misspelled key is an error
