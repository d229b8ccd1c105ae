"""Layer-wise lr decay takes layer ids from the backbone and exempts norms, biases and tables."""
import pytest
import torch
from torch import nn

from densevit.engine.optim import LayerDecayOptimWrapperConstructor, layer_decay_param_groups
from densevit.models.contract import Backbone, FeatureSpec


class TwoBlockBackbone(Backbone):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 4, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2, 2))
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 1), nn.LayerNorm(4))
                                     for _ in range(2)])
        self.out_features = {'s4': FeatureSpec(4, 4)}
        self.num_layers = 2

    def layer_id(self, name):
        if name.startswith(('stem', 'pos_embed')):
            return 0
        return int(name.split('.')[1]) + 1

    def no_weight_decay(self):
        return {'pos_embed'}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TwoBlockBackbone()
        self.head = nn.Conv2d(4, 2, 1)


def _group_of(groups, param):
    return next(g for g in groups if any(p is param for p in g['params']))


def test_lr_scale_follows_depth_and_decay_exemptions():
    model = Model()
    groups = layer_decay_param_groups(model, lr=1.0, weight_decay=0.05, decay_rate=0.5)
    # num_layers = 2: stem id 0 -> 0.5**3, block i -> 0.5**(2 - i), head -> 1
    assert _group_of(groups, model.backbone.stem.weight)['lr'] == pytest.approx(0.125)
    assert _group_of(groups, model.backbone.blocks[0][0].weight)['lr'] == pytest.approx(0.25)
    assert _group_of(groups, model.backbone.blocks[1][0].weight)['lr'] == pytest.approx(0.5)
    assert _group_of(groups, model.head.weight)['lr'] == pytest.approx(1.0)
    assert _group_of(groups, model.backbone.blocks[1][0].weight)['weight_decay'] == 0.05
    for exempt in (model.backbone.pos_embed, model.backbone.blocks[0][1].weight,
                   model.backbone.stem.bias, model.head.bias):
        assert _group_of(groups, exempt)['weight_decay'] == 0.0
    n_params = sum(len(g['params']) for g in groups)
    assert n_params == len(list(model.parameters()))


def test_constructor_builds_optimizer_and_rejects_unknown_keys():
    model = Model()
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1))
    wrapper = LayerDecayOptimWrapperConstructor(cfg, dict(layer_decay_rate=0.7))(model)
    lrs = sorted({round(g['lr'], 8) for g in wrapper.optimizer.param_groups})
    assert lrs == pytest.approx(sorted({1e-3 * 0.7 ** k for k in range(4)}))
    with pytest.raises(KeyError, match='layer_decay_rat'):
        LayerDecayOptimWrapperConstructor(cfg, dict(layer_decay_rat=0.7))
