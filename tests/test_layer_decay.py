"""Layer-wise lr decay takes layer ids from the backbone and exempts what each recipe names; on
the published ViT-B and Swin-T UperNet configs the per-parameter lr and weight decay equal hand
tables (written from the recipes, not from densevit) at every step of mmengine's schedulers."""
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


def test_no_decay_kinds_on_a_toy_and_unknown_kinds():
    model = Model()
    model.head_norm = nn.BatchNorm2d(2)

    def wd(no_decay, param):
        groups = layer_decay_param_groups(model, lr=1.0, weight_decay=0.05, decay_rate=1.0,
                                          no_decay=no_decay)
        return _group_of(groups, param)['weight_decay']

    norm_w, head_norm_w = model.backbone.blocks[0][1].weight, model.head_norm.weight
    bias, table = model.backbone.stem.bias, model.backbone.pos_embed
    assert [wd(('norm',), p) for p in (norm_w, head_norm_w, bias, table)] == [0, 0, .05, .05]
    assert [wd(('backbone_norm',), p) for p in (norm_w, head_norm_w, bias)] == [0, .05, .05]
    assert [wd(('bias',), p) for p in (norm_w, bias, model.head.bias)] == [.05, 0, 0]
    assert [wd(('pos_embed',), p) for p in (table, norm_w)] == [0, .05]
    with pytest.raises(ValueError, match='backbone_norm'):
        layer_decay_param_groups(model, lr=1.0, weight_decay=0.1, decay_rate=1.0,
                                 no_decay=('norms',))
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1))
    with pytest.raises(ValueError, match='unknown'):
        LayerDecayOptimWrapperConstructor(cfg, dict(layer_decay_rate=0.7, no_decay=['bn']))


# ---------------------------------------------------------------- the published configs
# Hand tables: the lr scale is rate ** (num_layers + 1 - layer id), with the layer ids of the
# recipes (ViTDet / BEiT: embeddings 0, block i -> i + 1, everything after the blocks
# num_layers + 1; Swin: blocks numbered in order over the stages, a patch merging with the block
# before it), and the weight decay each recipe states.
VIT_B = 'configs/upernet/upernet_vit-b_ade20k-512x512-160k.py'
SWIN_T = 'configs/upernet/upernet_swin-t_ade20k-512x512-160k.py'

# ViT-B, MAE recipe with ViTDet's exemptions: lr 1e-4, decay 0.65, 12 blocks, wd 0.05 except
# norm layers and the absolute position embedding
VIT_B_TABLE = {
    'backbone.pos_embed': (0.65 ** 13, 0.0),
    'backbone.patch_embed.proj.weight': (0.65 ** 13, 0.05),
    'backbone.patch_embed.proj.bias': (0.65 ** 13, 0.05),
    'backbone.blocks.0.norm1.weight': (0.65 ** 12, 0.0),
    'backbone.blocks.0.attn.qkv.weight': (0.65 ** 12, 0.05),
    'backbone.blocks.5.attn.rel_pos_h': (0.65 ** 7, 0.05),
    'backbone.blocks.8.attn.qkv.bias': (0.65 ** 4, 0.05),
    'backbone.blocks.11.mlp.fc2.weight': (0.65, 0.05),
    'backbone.blocks.11.norm2.bias': (0.65, 0.0),
    'neck.lateral.s4.conv.weight': (1.0, 0.05),
    'neck.output.s32.norm.weight': (1.0, 0.0),
    'decode_head.lateral_convs.0.1.weight': (1.0, 0.0),
    'decode_head.conv_seg.weight': (1.0, 0.05),
    'decode_head.conv_seg.bias': (1.0, 0.05),
    'auxiliary_heads.0.convs.0.1.bias': (1.0, 0.0),
}
# Swin-T, mmseg's recipe: lr 6e-5, no depth decay, wd 0.01 except the backbone's norms and
# relative-position tables (the heads' BatchNorms and every bias keep it)
SWIN_T_TABLE = {
    'backbone.patch_embed.proj.weight': (1.0, 0.01),
    'backbone.patch_embed.norm.weight': (1.0, 0.0),
    'backbone.layers.0.blocks.0.norm1.weight': (1.0, 0.0),
    'backbone.layers.0.blocks.0.attn.relative_position_bias_table': (1.0, 0.0),
    'backbone.layers.0.blocks.0.attn.qkv.bias': (1.0, 0.01),
    'backbone.layers.2.blocks.3.mlp.fc1.weight': (1.0, 0.01),
    'backbone.layers.1.downsample.norm.bias': (1.0, 0.0),
    'backbone.layers.1.downsample.reduction.weight': (1.0, 0.01),
    'backbone.out_norms.s32.weight': (1.0, 0.0),
    'decode_head.ppm.branches.0.1.1.weight': (1.0, 0.01),
    'decode_head.conv_seg.bias': (1.0, 0.01),
    'auxiliary_heads.0.convs.0.1.weight': (1.0, 0.01),
}
# Swin-T's layer ids (depths 2, 2, 6, 2 -> 12 blocks) under a decay of 0.9
SWIN_T_DECAY_09 = {
    'backbone.patch_embed.proj.weight': 0.9 ** 13,
    'backbone.layers.0.blocks.0.attn.qkv.weight': 0.9 ** 12,
    'backbone.layers.0.blocks.1.mlp.fc2.bias': 0.9 ** 11,
    'backbone.layers.1.downsample.reduction.weight': 0.9 ** 11,  # with block 2
    'backbone.layers.2.blocks.3.mlp.fc1.weight': 0.9 ** 5,  # block 2 + 2 + 3 + 1 = 8
    'backbone.layers.3.blocks.1.norm2.weight': 0.9 ** 1,
    'backbone.out_norms.s32.weight': 1.0,
    'decode_head.conv_seg.weight': 1.0,
}


def _published(path: str, **paramwise):
    from mmengine.config import Config

    from densevit.registry import MODELS
    from .conftest import ROOT
    cfg = Config.fromfile(f'{ROOT}/{path}')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    wrapper_cfg = dict(cfg.optim_wrapper)
    wrapper_cfg.pop('constructor')
    paramwise_cfg = dict(wrapper_cfg.pop('paramwise_cfg'), **paramwise)
    wrapper = LayerDecayOptimWrapperConstructor(wrapper_cfg, paramwise_cfg)(model)
    return cfg, model, wrapper


def _lr_and_wd(model, wrapper):
    by_param = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    return {name: (by_param[id(p)]['lr'], by_param[id(p)]['weight_decay'])
            for name, p in model.named_parameters()}


def _schedule_factor(step: int) -> float:
    """schedule_160k by hand, with mmengine's convention that a scheduler over [begin, end)
    reaches its final value at step end - 1: linear warmup from 1e-6 to 1 over steps 0..1499,
    then poly (power 1) from 1 at step 1500 to 0 at step 159999."""
    if step < 1500:
        return 1e-6 + (1 - 1e-6) * step / 1499
    return 1 - (step - 1500) / (160000 - 1500 - 1)


@pytest.mark.filterwarnings(r'ignore:Detected call of `scheduler.step\(\)`')  # no training here
@pytest.mark.parametrize('path,table,base_lr', [(VIT_B, VIT_B_TABLE, 1e-4),
                                                (SWIN_T, SWIN_T_TABLE, 6e-5)])
def test_published_lr_scale_and_weight_decay_under_the_schedule(path, table, base_lr):
    from mmengine.registry import PARAM_SCHEDULERS
    cfg, model, wrapper = _published(path)
    assert cfg.optim_wrapper.optimizer.lr == base_lr
    groups = wrapper.optimizer.param_groups
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler]
    for step in range(3001):
        if step in (0, 750, 1500, 3000):
            got = _lr_and_wd(model, wrapper)
            for name, (scale, weight_decay) in table.items():
                lr, wd = got[name]
                assert lr == pytest.approx(base_lr * scale * _schedule_factor(step),
                                           rel=1e-6), (name, step)
                assert wd == weight_decay, (name, step)
        for scheduler in schedulers:
            scheduler.step()


def test_swin_layer_ids_by_hand():
    _, model, wrapper = _published(SWIN_T, layer_decay_rate=0.9)
    got = _lr_and_wd(model, wrapper)
    for name, scale in SWIN_T_DECAY_09.items():
        assert got[name][0] == pytest.approx(6e-5 * scale, rel=1e-9), name
