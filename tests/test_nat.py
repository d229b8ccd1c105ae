"""NAT / DiNAT backbones and the official-checkpoint converter.

References: natten's own ``na2d`` (CPU, forward, no rpb) inside the small-map policy of the NATTEN
module the official models were trained with (``natten.NeighborhoodAttention2D`` 0.14-0.15: pad an
axis shorter than kernel x dilation up to it, keep the dilation, crop); an explicit masked full
attention (N x N, mask built from the neighborhood definition) where the rpb matters; the papers'
parameter counts and the official SHI-Labs key names and settings.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from densevit.checkpoint.loading import load_state_dict
from densevit.checkpoint.nat import CONVERTERS, convert_nat
from densevit.models.backbones.nat import NAT, DiNAT, NATBlock, NeighborhoodAttention2d
from densevit.models.contract import check_features
from densevit.registry import MODELS

# The official COCO DiNAT-T dilations (detection/configs/dinat/mask_rcnn_dinat_tiny_3x_coco.py).
COCO_DINAT_TINY = [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]]


# ---- explicit reference: neighborhood attention as masked full attention ------------------------

def _axis_neighbors(length: int, kernel: int, dilation: int) -> torch.Tensor:
    """(L, L) bool: key j is in query i's neighborhood along one axis. Each query attends to the
    kernel tokens of its own dilation group (i % d) nearest to it, the window shifted (not
    clipped) to stay inside the group."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        group = list(range(i % dilation, length, dilation))
        start = min(max(i // dilation - kernel // 2, 0), len(group) - kernel)
        for j in group[start:start + kernel]:
            allowed[i, j] = True
    return allowed


def reference_na2d(q, k, v, kernel, dilation, rpb):
    """q, k, v (B, H, W, heads, D); dilation (dh, dw); rpb (heads, 2k-1, 2k-1) indexed by the
    relative offset (key - query) / dilation + k - 1."""
    b, h, w, heads, d = q.shape
    dh, dw = dilation
    mask = (_axis_neighbors(h, kernel, dh)[:, None, :, None]
            & _axis_neighbors(w, kernel, dw)[None, :, None, :]).reshape(h * w, h * w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    off_y = ((ys[None] - ys[:, None]) // dh + kernel - 1).clamp(0, 2 * kernel - 2)
    off_x = ((xs[None] - xs[:, None]) // dw + kernel - 1).clamp(0, 2 * kernel - 2)
    bias = rpb[:, off_y, off_x]  # (heads, N, N), only read where mask is True
    bias = bias.masked_fill(~mask, float('-inf'))
    # (B, H, W, heads, D) -> (B, heads, N, D)
    qf, kf, vf = (t.reshape(b, h * w, heads, d).transpose(1, 2) for t in (q, k, v))
    attn = (qf @ kf.transpose(-1, -2)) * d ** -0.5 + bias
    out = attn.softmax(-1) @ vf  # (B, heads, N, D)
    return out.transpose(1, 2).reshape(b, h, w, heads, d)


def _official_padding(x, kernel, dilation):
    """natten 0.14's NeighborhoodAttention2D.forward: an axis shorter than kernel * dilation is
    zero-padded at the end up to it (before the qkv projection); the dilation stays."""
    span = kernel * dilation
    h, w = x.shape[1:3]
    return F.pad(x, (0, 0, 0, max(0, span - w), 0, max(0, span - h)))


def reference_attention(module: NeighborhoodAttention2d, x, dilation, na2d=None):
    """The official module's computation: pad (official policy), qkv split, neighborhood attention
    (``na2d``, default the masked reference with the module's rpb), crop, projection."""
    b, h, w, c = x.shape
    kern, heads = module.kernel_size, module.num_heads
    xp = _official_padding(x, kern, dilation)
    hp, wp = xp.shape[1:3]
    qkv = xp @ module.qkv.weight.t() + module.qkv.bias
    q, k, v = qkv.reshape(b, hp, wp, 3, heads, c // heads).unbind(3)
    if na2d is None:
        out = reference_na2d(q, k, v, kern, (dilation, dilation), module.rpb)
    else:
        out = na2d(q, k, v, kern, dilation)
    out = out[:, :h, :w].reshape(b, h, w, c)
    return out @ module.proj.weight.t() + module.proj.bias


def natten_na2d(q, k, v, kernel, dilation):
    """natten's own na2d. Where both sides divide by the dilation (always so for a side padded to
    kernel * dilation) the dilation groups are attended as one batch of dilation-1 sub-grids, the
    definition of dilated neighborhood attention, because natten's CPU path holds an N x N score
    matrix (a 196x196 map would take ~12 GB); ``test_natten_reference_by_groups`` checks that this
    equals natten's dilated call."""
    natten = pytest.importorskip('natten')
    b, h, w, heads, d = q.shape
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # flex attention warns that it runs uncompiled on CPU
        if dilation == 1 or h % dilation or w % dilation:
            return natten.na2d(q, k, v, kernel, dilation=dilation)

        def groups(t):
            # (B, H, W, heads, D) -> (B, H/d, d, W/d, d, heads, D) -> (B*d*d, H/d, W/d, heads, D)
            t = t.reshape(b, h // dilation, dilation, w // dilation, dilation, heads, d)
            return t.permute(0, 2, 4, 1, 3, 5, 6).reshape(-1, h // dilation, w // dilation,
                                                           heads, d)

        out = natten.na2d(groups(q), groups(k), groups(v), kernel, dilation=1)
    out = out.reshape(b, dilation, dilation, h // dilation, w // dilation, heads, d)
    return out.permute(0, 3, 1, 4, 2, 5, 6).reshape(b, h, w, heads, d)


def natten_backbone(model: NAT, images: torch.Tensor) -> dict:
    """``model``'s forward with every attention computed by ``reference_attention`` over natten's
    na2d (the model's rpb must be zero: natten has none)."""
    x = model.patch_embed(images)
    out = {}
    for i, level in enumerate(model.levels):
        for block in level.blocks:
            attn = reference_attention(block.attn, block.norm1(x), block.dilation,
                                       na2d=natten_na2d)
            x = x + (attn if block.gamma1 is None else block.gamma1 * attn)
            mlp = block.mlp(block.norm2(x))
            x = x + (mlp if block.gamma2 is None else block.gamma2 * mlp)
        if i in model.out_indices:
            out[f's{4 * 2 ** i}'] = getattr(model, f'norm{i}')(x).permute(0, 3, 1, 2)
        if level.downsample is not None:
            x = level.downsample(x)
    return out


def _zero_rpb(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('rpb'):
                p.zero_()


def test_reference_mask_is_the_plain_neighborhood_inside_the_map():
    # hand check: length 7, kernel 3, dilation 2 -> groups {0,2,4,6} and {1,3,5}
    allowed = _axis_neighbors(7, 3, 2)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2, 4]  # shifted at the border
    assert allowed[4].nonzero().flatten().tolist() == [2, 4, 6]
    assert allowed[5].nonzero().flatten().tolist() == [1, 3, 5]
    assert allowed.sum(1).eq(3).all()


@pytest.mark.parametrize('size, kernel, dilation', [
    ((9, 12), 3, 1),
    ((9, 12), 3, 2),
    ((9, 13), 3, 4),  # rows shorter than 3 * 4: padded to 12 rows, dilation 4 kept
    ((2, 5), 3, 2),  # both axes shorter than 3 * 2: padded to 6 x 6
    ((14, 15), 5, 1),
])
def test_attention_matches_masked_reference(size, kernel, dilation):
    torch.manual_seed(0)
    module = NeighborhoodAttention2d(dim=12, num_heads=3, kernel_size=kernel)
    with torch.no_grad():
        module.rpb.normal_()  # make the bias matter
        module.qkv.bias.normal_()
    x = torch.randn(2, *size, 12)
    expected = reference_attention(module, x, dilation)
    torch.testing.assert_close(module(x, dilation), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('size, kernel, dilation', [
    ((5, 6), 3, 3),  # both axes shorter than 9
    ((4, 11), 3, 4),  # rows 4 < 12 padded, columns 11 < 12 padded
    ((13, 6), 5, 2),  # rows long enough, columns 6 < 10 padded
    ((2, 2), 7, 1),  # smaller than the kernel
    ((3, 7), 7, 3),  # DiNAT-T level 3 at a small input
])
def test_small_maps_match_natten(size, kernel, dilation):
    """Maps smaller than kernel x dilation, against natten's own na2d inside the official
    NATTEN module's pad / crop (natten refuses such maps itself)."""
    torch.manual_seed(0)
    module = NeighborhoodAttention2d(dim=16, num_heads=2, kernel_size=kernel)
    _zero_rpb(module)
    with torch.no_grad():
        module.qkv.bias.normal_()  # the padded tokens' keys and values are these biases
    x = torch.randn(2, *size, 16)
    with torch.no_grad():  # natten's CPU path is forward only
        expected = reference_attention(module, x, dilation, na2d=natten_na2d)
        out = module(x, dilation)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_natten_reference_by_groups():
    """The grouped form of the natten reference equals natten's own dilated call."""
    natten = pytest.importorskip('natten')
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 24, 18, 2, 8, generator=gen) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        direct = natten.na2d(q, k, v, 3, dilation=6)
    torch.testing.assert_close(natten_na2d(q, k, v, 3, 6), direct, atol=1e-6, rtol=1e-6)


def test_block_wiring_with_layer_scale():
    torch.manual_seed(0)
    block = NATBlock(dim=8, num_heads=2, kernel_size=3, dilation=2, mlp_ratio=2.0,
                     layer_scale=0.5).eval()
    with torch.no_grad():
        block.gamma1.uniform_()
        block.gamma2.uniform_()
    x = torch.randn(1, 7, 8, 8)
    y = x + block.gamma1 * reference_attention(block.attn, block.norm1(x), 2)
    mlp = block.mlp
    y = y + block.gamma2 * mlp.fc2(F.gelu(mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(block(x), y, atol=1e-5, rtol=1e-5)


# ---- structure --------------------------------------------------------------------------------

@pytest.mark.parametrize('cls, arch, millions', [
    (NAT, 'mini', 20), (NAT, 'tiny', 28), (NAT, 'small', 51), (NAT, 'base', 90),
    (DiNAT, 'mini', 20), (DiNAT, 'tiny', 28), (DiNAT, 'small', 51), (DiNAT, 'base', 90),
    (DiNAT, 'large', 200),
])
def test_parameter_counts_match_papers(cls, arch, millions):
    # The papers count the classifier: backbone (stem, levels) + final norm + 1000-class head.
    # Our dense backbone has per-output norms instead; with out_indices=(3,) the only one, norm3,
    # has exactly the final norm's shape.
    with torch.device('meta'):
        model = cls(arch=arch, out_indices=(3,))
    channels = model.out_features['s32'].channels
    total = sum(p.numel() for p in model.parameters()) + channels * 1000 + 1000
    assert abs(total / 1e6 - millions) / millions < 0.01, total


def test_dinat_default_dilations_are_the_official_imagenet_pattern():
    model = DiNAT(arch='mini', embed_dim=16, out_indices=(0,))
    got = [[block.dilation for block in level.blocks] for level in model.levels]
    assert got == [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
    nat = NAT(arch='mini', embed_dim=16, out_indices=(0,))
    assert all(block.dilation == 1 for level in nat.levels for block in level.blocks)


def test_official_settings_and_registry():
    assert MODELS.get('NAT') is NAT and MODELS.get('DiNAT') is DiNAT
    with torch.device('meta'):
        small = NAT(arch='small')
        dinat_small = DiNAT(arch='small')
        large = DiNAT(arch='large')
    block = small.levels[2].blocks[0]
    assert block.attn.num_heads == 12 and block.gamma1 is not None  # NAT-S: heads 3.., ls 1e-5
    assert dinat_small.levels[2].blocks[0].gamma1 is None  # the official DiNAT-S has none
    assert block.mlp.fc1.out_features == 2 * 384
    assert large.levels[3].blocks[0].attn.num_heads == 48
    assert large.out_features['s32'].channels == 1536
    assert block.attn.rpb.shape == (12, 13, 13)


@pytest.mark.parametrize('kwargs, words', [
    (dict(arch='large'), 'arch'),  # NAT has no large
    (dict(dilations=[[1, 2], [1]]), 'dilations'),
    (dict(out_indices=(4,)), 'out_indices'),
    (dict(kernel_size=4), 'kernel_size'),
    (dict(num_heads=[2, 4]), 'num_heads'),
])
def test_bad_arguments_name_the_problem(kwargs, words):
    with pytest.raises(ValueError, match=words):
        NAT(**{'arch': 'mini', 'embed_dim': 16, **kwargs})


def test_layer_ids_and_no_weight_decay():
    model = DiNAT(arch='mini', embed_dim=16, out_indices=(0, 1, 2, 3))
    depths = [3, 4, 6, 5]
    assert model.num_layers == 18
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids['patch_embed.proj.0.weight'] == 0 and ids['patch_embed.norm.weight'] == 0
    assert ids['levels.0.blocks.0.norm1.weight'] == 1
    assert ids['levels.0.blocks.2.mlp.fc2.bias'] == 3
    assert ids['levels.0.downsample.reduction.weight'] == 3  # with the block before it
    assert ids['levels.1.blocks.0.attn.qkv.weight'] == 4
    assert ids['levels.2.downsample.norm.bias'] == 3 + 4 + 6
    assert ids['levels.3.blocks.4.attn.rpb'] == 18
    assert all(ids[f'norm{i}.weight'] == 19 for i in range(4))
    # ids never decrease in module order, and every block id appears
    order = list(ids.values())
    assert order == sorted(order[:-8]) + order[-8:] and set(order) == set(range(20))
    with pytest.raises(ValueError, match='not under'):
        model.layer_id('head.weight')
    nwd = model.no_weight_decay()
    assert len(nwd) == sum(depths) and all(n.endswith('.attn.rpb') for n in nwd)
    assert nwd <= set(ids)


# ---- converter --------------------------------------------------------------------------------

def official_state_dict(embed_dim, depths, heads, mlp_ratio, kernel=7, layer_scale=False,
                        classes=1000):
    """Key names and shapes of the official classification NAT (classification/nat.py:
    ConvTokenizer, NATBlock levels of NATLayer blocks, ConvDownsampler, norm, head), random
    values."""
    sd = {}

    def add(name, *shape):
        sd[name] = torch.randn(*shape)

    add('patch_embed.proj.0.weight', embed_dim // 2, 3, 3, 3)
    add('patch_embed.proj.0.bias', embed_dim // 2)
    add('patch_embed.proj.1.weight', embed_dim, embed_dim // 2, 3, 3)
    add('patch_embed.proj.1.bias', embed_dim)
    add('patch_embed.norm.weight', embed_dim)
    add('patch_embed.norm.bias', embed_dim)
    for i, depth in enumerate(depths):
        dim, hidden = embed_dim * 2 ** i, int(embed_dim * 2 ** i * mlp_ratio)
        for j in range(depth):
            p = f'levels.{i}.blocks.{j}.'
            for norm in ('norm1', 'norm2'):
                add(p + norm + '.weight', dim)
                add(p + norm + '.bias', dim)
            add(p + 'attn.qkv.weight', 3 * dim, dim)
            add(p + 'attn.qkv.bias', 3 * dim)
            add(p + 'attn.rpb', heads[i], 2 * kernel - 1, 2 * kernel - 1)
            add(p + 'attn.proj.weight', dim, dim)
            add(p + 'attn.proj.bias', dim)
            add(p + 'mlp.fc1.weight', hidden, dim)
            add(p + 'mlp.fc1.bias', hidden)
            add(p + 'mlp.fc2.weight', dim, hidden)
            add(p + 'mlp.fc2.bias', dim)
            if layer_scale:
                add(p + 'gamma1', dim)
                add(p + 'gamma2', dim)
        if i < len(depths) - 1:
            add(f'levels.{i}.downsample.reduction.weight', 2 * dim, dim, 3, 3)
            add(f'levels.{i}.downsample.norm.weight', 2 * dim)
            add(f'levels.{i}.downsample.norm.bias', 2 * dim)
    last = embed_dim * 2 ** (len(depths) - 1)
    add('norm.weight', last)
    add('norm.bias', last)
    add('head.weight', classes, last)
    add('head.bias', classes)
    return sd


def test_converter_classification_checkpoint():
    assert CONVERTERS['nat'] is convert_nat and CONVERTERS['dinat'] is convert_nat
    official = official_state_dict(16, [3, 4, 6, 5], [2, 4, 8, 16], 3.0, layer_scale=True)
    converted = convert_nat({'model': official})
    assert not {'head.weight', 'head.bias', 'norm.weight', 'norm.bias'} & set(converted)
    model = DiNAT(arch='mini', embed_dim=16, layer_scale=1e-5)
    report = load_state_dict(model, converted, log=False)
    assert report.unexpected == [] and report.resized == {}
    assert sorted(report.missing) == sorted(f'norm{i}.{p}' for i in range(4)
                                            for p in ('weight', 'bias'))
    own = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(own[key], value), key


def test_converter_dense_checkpoint_and_rpb_resize():
    official = official_state_dict(16, [3, 4, 6, 5], [2, 4, 8, 16], 3.0)
    del official['norm.weight'], official['norm.bias'], official['head.weight'], \
        official['head.bias']
    dense = {f'backbone.{k}': v for k, v in official.items()}
    for i in range(4):  # the dense backbones' per-output norms
        dense[f'backbone.norm{i}.weight'] = torch.randn(16 * 2 ** i)
        dense[f'backbone.norm{i}.bias'] = torch.randn(16 * 2 ** i)
    dense['neck.lateral_convs.0.conv.weight'] = torch.randn(8, 16, 1, 1)
    dense['decode_head.conv_seg.weight'] = torch.randn(150, 8, 1, 1)
    converted = convert_nat({'state_dict': dense, 'meta': {}})
    assert set(converted) == {k[len('backbone.'):] for k in dense if k.startswith('backbone.')}
    model = NAT(arch='mini', embed_dim=16, kernel_size=5)
    report = load_state_dict(model, converted, strict=True, log=False)
    assert len(report.resized) == 18  # every rpb: (heads, 13, 13) -> (heads, 9, 9)
    assert report.resized['levels.0.blocks.0.attn.rpb'] == ((2, 13, 13), (2, 9, 9))
    with pytest.raises(ValueError, match='patch_embed'):
        convert_nat({'model': {'conv1.weight': torch.zeros(1)}})


# ---- forward ----------------------------------------------------------------------------------

def tiny_dinat(**overrides):
    kwargs = dict(arch='mini', embed_dim=16, num_heads=[1, 2, 4, 8], depths=[2, 2, 2, 2])
    return DiNAT(**{**kwargs, **overrides})


def test_tiny_dinat_forward_backward_finite_gradients():
    torch.manual_seed(0)
    # 64x48 input: level 3 is 2x2, smaller than the kernel; every dilated block pads its map
    model = tiny_dinat(layer_scale=0.1, drop_path_rate=0.0,
                       dilations=[[1, 28], [1, 14], [3, 7], [1, 3]])
    images = torch.randn(2, 3, 64, 48)
    feats = model(images)
    check_features(feats, model.out_features, (64, 48), 'DiNAT')
    sum(f.square().mean() for f in feats.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_odd_input_size_gives_ceil_shapes():
    model = tiny_dinat(out_indices=(0, 2, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 37, 70))
    assert sorted(feats) == ['s16', 's32', 's4']
    check_features(feats, model.out_features, (37, 70), 'DiNAT')


def _check_against_natten(model: NAT, size) -> float:
    _zero_rpb(model)
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        ours = model(images)
        ref = natten_backbone(model, images)
    worst = 0.0
    for name in ref:
        worst = max(worst, (ours[name] - ref[name]).abs().max().item())
        torch.testing.assert_close(ours[name], ref[name], atol=1e-4, rtol=1e-4)
    return worst


def test_tiny_dinat_small_maps_match_natten():
    # 48x40 input: maps 12x10, 6x5, 3x3, 2x2, every dilated block smaller than 3 x dilation
    torch.manual_seed(0)
    model = tiny_dinat(kernel_size=3, layer_scale=0.5,
                       dilations=[[1, 6], [2, 4], [3, 2], [1, 2]]).eval()
    _check_against_natten(model, (48, 40))


@pytest.mark.slow
def test_dinat_tiny_imagenet_dilations_match_natten():
    """DiNAT-T (ImageNet dilations 8/4/2/1, kernel 7) at 128x96: every level's map (32x24, 16x12,
    8x6, 4x3) is smaller than 7 x its dilation."""
    torch.manual_seed(0)
    _check_against_natten(DiNAT(arch='tiny').eval(), (128, 96))


@pytest.mark.slow
def test_dinat_tiny_coco_dilations_match_natten():
    """DiNAT-T with the COCO dilations at 224x160 (0.2 of the training scale): level 0 is 56x40,
    padded to 196x196 for dilation 28, level 1 28x20 padded to 98 for dilation 14, ..."""
    torch.manual_seed(0)
    _check_against_natten(DiNAT(arch='tiny', dilations=COCO_DINAT_TINY).eval(), (224, 160))
