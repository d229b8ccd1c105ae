"""Swin backbone and its checkpoint converter.

References: transformers' Swin (``SwinBackbone``, the dense-prediction wrapper of ``SwinModel``,
which pads, then shifts, and builds its shift mask on the padded size as the official detection /
segmentation Swin does) with the same weights at sizes the windows do not divide, stage by stage;
timm's Swin at 224 and timm's checkpoint filter for the converter; the official Swin's bicubic
resizing of relative position tables; and, for the ``mask_padding`` option, a dense
(full-attention, explicitly masked) formulation of its window rule."""
import re

import pytest
import timm
import torch
from timm.models.swin_transformer import checkpoint_filter_fn

import torch.nn.functional as F

from densevit.checkpoint.loading import load_state_dict
from densevit.checkpoint.swin import CONVERTERS, convert_swin
from densevit.models.backbones.swin import Swin, shifted_window_mask
from densevit.models.contract import check_features
from densevit.registry import MODELS

OUT_NORM_KEYS = sorted(f'out_norms.{name}.{p}' for name in ('s4', 's8', 's16', 's32')
                       for p in ('weight', 'bias'))


@pytest.fixture(scope='module')
def timm_swin_t():
    torch.manual_seed(0)
    return timm.create_model('swin_tiny_patch4_window7_224', pretrained=False).eval()


@pytest.fixture(scope='module')
def swin_t():
    """Swin-T comparable with timm's classification Swin at 224: every map divides by 7 and the
    last (7x7) is one window, which the classification Swin does not shift; ``mask_padding``'s
    rule (no shift along an axis no longer than the window) is that. The dense-prediction Swin
    (the default) shifts it; see the transformers tests."""
    return Swin(arch='tiny', mask_padding=True).eval()


def _tiny_swin(**overrides) -> Swin:
    cfg = dict(arch='tiny', embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
               window_size=4, drop_path_rate=0.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    model = Swin(**cfg).eval()
    with torch.no_grad():  # non-trivial norms and bias tables so that every part is exercised
        for name, p in model.named_parameters():
            if name.endswith('relative_position_bias_table'):
                p.normal_(0, 1.0)
            elif 'norm' in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _transformers_state_dict(model: Swin) -> dict:
    """densevit (timm-named) Swin weights -> transformers ``SwinBackbone`` keys: qkv split into
    q/k/v projections, timm's patch merging at the start of stage i+1 moved to the end of stage i,
    the output norms as ``hidden_states_norms.stage{i+1}``."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith('relative_position_index'):
            continue
        if key.startswith('out_norms.'):
            _, name, param = key.split('.')
            stage = {'s4': 1, 's8': 2, 's16': 3, 's32': 4}[name]
            out[f'hidden_states_norms.stage{stage}.{param}'] = value
            continue
        key = key.replace('patch_embed.proj.', 'swin.embeddings.patch_embeddings.projection.')
        key = key.replace('patch_embed.norm.', 'swin.embeddings.norm.')
        match = re.fullmatch(r'layers\.(\d+)\.downsample\.(.+)', key)
        if match:
            out[f'swin.encoder.layers.{int(match[1]) - 1}.downsample.{match[2]}'] = value
            continue
        match = re.fullmatch(r'layers\.(\d+)\.blocks\.(\d+)\.(.+)', key)
        if match is None:
            out[key] = value
            continue
        prefix, part = f'swin.encoder.layers.{match[1]}.blocks.{match[2]}.', match[3]
        if part.startswith('attn.qkv.'):
            for name, chunk in zip('qkv', value.chunk(3, dim=0)):
                out[prefix + f'attention.{name}_proj.{part.rsplit(".", 1)[1]}'] = chunk
            continue
        part = (part.replace('norm1.', 'layernorm_before.').replace('norm2.', 'layernorm_after.')
                .replace('attn.proj.', 'attention.o_proj.')
                .replace('attn.relative_position_bias_table',
                         'attention.relative_position_bias.relative_position_bias_table'))
        out[prefix + part] = value
    return out


def _transformers_swin(model: Swin, embed_dim: int, depths, num_heads, window: int):
    """transformers' SwinBackbone holding ``model``'s weights (everything but its classification
    norm ``swin.layernorm``, which the backbone output does not use)."""
    from transformers import SwinBackbone, SwinConfig
    config = SwinConfig(embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
                        window_size=window, patch_size=4, mlp_ratio=4.0, qkv_bias=True,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        drop_path_rate=0.0, use_absolute_embeddings=False,
                        out_features=['stage1', 'stage2', 'stage3', 'stage4'],
                        attn_implementation='eager')
    ref = SwinBackbone(config).eval()
    missing, unexpected = ref.load_state_dict(_transformers_state_dict(model), strict=False)
    assert not unexpected and all(k.startswith('swin.layernorm.') for k in missing), (
        missing, unexpected)
    return ref


def _timm_features_with_our_norms(model: Swin, ref: torch.nn.Module, x: torch.Tensor) -> dict:
    """timm's stage outputs (before any norm), through our per-level norms."""
    inter = ref.forward_intermediates(x, intermediates_only=True)
    out = {}
    for (name, norm), feat in zip(model.out_norms.items(), inter):
        out[name] = norm(feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # NCHW -> NHWC -> NCHW
    return out


# ---------------------------------------------------------------- parity with timm at 224

def test_swin_t_equals_timm_at_224(timm_swin_t, swin_t):
    model = swin_t
    report = load_state_dict(model, convert_swin(timm_swin_t.state_dict()), log=False)
    assert sorted(report.missing) == OUT_NORM_KEYS and not report.unexpected
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = model(x)
        ref = _timm_features_with_our_norms(model, timm_swin_t, x)
    check_features(ours, model.out_features, (224, 224), 'Swin-T')
    for name in ('s4', 's8', 's16', 's32'):
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=0)
    # the default (official dense) Swin agrees wherever the maps are larger than the window
    official = Swin(arch='tiny').eval()
    official.load_state_dict(model.state_dict())
    with torch.no_grad():
        dense = official(x)
    for name in ('s4', 's8', 's16'):
        torch.testing.assert_close(dense[name], ref[name], atol=1e-5, rtol=0)
    assert (dense['s32'] - ref['s32']).abs().max() > 1e-3  # 7x7: shifted in one window


# ---------------------------------------------------------------- any input size

def _dense_block(block, x: torch.Tensor, window: int) -> torch.Tensor:
    """A Swin block as full attention over all H*W tokens: a pair may attend iff both tokens fall
    in the same cell of the window grid (offset by half a window in shifted blocks, along axes
    longer than the window); the bias is the table entry of their (dy, dx). No padding, no roll."""
    b, h, w, c = x.shape
    shifted = any(block.shift_size)
    heads = block.attn.num_heads

    def cells(n):
        s = window // 2 if shifted and n > window else 0
        return torch.div(torch.arange(n) - s, window, rounding_mode='floor')

    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    cy, cx = cells(h)[ys], cells(w)[xs]
    same = (cy[:, None] == cy[None, :]) & (cx[:, None] == cx[None, :])
    dy = (ys[:, None] - ys[None, :]).clamp(-window + 1, window - 1)
    dx = (xs[:, None] - xs[None, :]).clamp(-window + 1, window - 1)
    index = (dy + window - 1) * (2 * window - 1) + (dx + window - 1)
    bias = block.attn.relative_position_bias_table[index].permute(2, 0, 1)  # (heads, N, N)
    bias = bias.masked_fill(~same, float('-inf'))

    tokens = block.norm1(x).reshape(b, h * w, c)
    q, k, v = block.attn.qkv(tokens).reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q * block.attn.scale) @ k.transpose(-2, -1) + bias
    y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, c)
    x = x + block.attn.proj(y).reshape(b, h, w, c)
    return x + block.mlp(block.norm2(x))


def _dense_swin(model: Swin, images: torch.Tensor) -> dict:
    h, w = images.shape[-2:]
    p = model.patch_size
    x = model.patch_embed(torch.nn.functional.pad(images, (0, -w % p, 0, -h % p)))
    out = {}
    for i, stage in enumerate(model.layers):
        x = stage.downsample(x)
        for block in stage.blocks:
            x = _dense_block(block, x, model.window_size)
        name = f's{p * 2 ** i}'
        out[name] = model.out_norms[name](x).permute(0, 3, 1, 2)
    return out


@pytest.mark.parametrize('size', [(64, 64), (37, 50), (100, 72), (20, 200)])
def test_mask_padding_equals_dense_window_attention(size):
    # mask_padding: every token attends to exactly the real tokens of its window cell.
    # 64: every map divisible; 37x50: padding and odd merges; 100x72: shift on stages 1-3 with
    # padding; 20x200: one axis shorter than a window (no shift there), the other long
    model = _tiny_swin(mask_padding=True)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
        ref = _dense_swin(model, x)
    check_features(ours, model.out_features, size, 'Swin')
    for name in ours:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-5)


def test_mask_padding_hides_the_padding():
    """A token's output depends only on real tokens: growing the image at the bottom-right by a
    block that lies in no window of the kept region changes nothing there (first stage only)."""
    model = _tiny_swin(out_indices=(0,), mask_padding=True)
    x = torch.randn(1, 3, 4 * 10, 4 * 10)  # 10x10 tokens: windows 4 -> padded to 12
    with torch.no_grad():
        small = model(x[..., :4 * 9, :4 * 9])['s4']  # 9x9 tokens, also padded to 12
        # plain blocks see cells [0,4),[4,8),[8,..); shifted blocks [0,2),[2,6),[6,10): token rows
        # 0..5 never share a cell with row 9, so they must agree between 9x9 and 10x10
        large = model(x)['s4']
    torch.testing.assert_close(small[..., :6, :6], large[..., :6, :6], atol=1e-5, rtol=1e-5)


def test_shifted_window_mask_by_hand():
    m = -100.0
    for mask_padding in (False, True):  # divisible, not shifted: no mask
        assert shifted_window_mask(4, 6, 2, (0, 0), mask_padding=mask_padding) is None
    # padding but no shift: the official Swin masks nothing; mask_padding hides the padded column
    assert shifted_window_mask(2, 3, 2, (0, 0)) is None
    torch.testing.assert_close(shifted_window_mask(2, 3, 2, (0, 0), mask_padding=True)[1],
                               torch.tensor([[0., m, 0, m], [m, 0, m, 0]] * 2))
    # 3x2 map, window 2, rows shifted by 1: padded to 4 rows, rolled up by one row
    # -> window 0 holds original rows 1-2 (one region), window 1 the padding row and row 0, which
    # lie in different regions (official) / the padding is hidden (mask_padding): same mask here
    official = shifted_window_mask(3, 2, 2, (1, 0))
    expected = torch.tensor([[[0., 0, 0, 0]] * 4,
                             [[0, 0, m, m], [0, 0, m, m], [m, m, 0, 0], [m, m, 0, 0]]])
    torch.testing.assert_close(official, expected)
    masked = shifted_window_mask(3, 2, 2, (1, 0), mask_padding=True)
    torch.testing.assert_close(masked, expected)
    # 3x3 map, window 2, shifted (1, 1): padded to 4x4. Official regions per axis of the rolled
    # map: [0, 2), [2, 3), [3, 4); the last window holds rolled rows / cols 2-3, four tokens in
    # four different regions: each attends to itself only (padding included).
    official = shifted_window_mask(3, 3, 2, (1, 1))
    torch.testing.assert_close(official[3], torch.full((4, 4), m).fill_diagonal_(0))
    # rolled row 2 / col 2 is original row 3 / col 3 = padding: with mask_padding every query of
    # that window sees only the one real token (rolled (3, 3) = original (0, 0)), and padding
    # queries see each other
    masked = shifted_window_mask(3, 3, 2, (1, 1), mask_padding=True)
    torch.testing.assert_close(masked[3], torch.tensor([[0., 0, 0, m], [0, 0, 0, m],
                                                        [0, 0, 0, m], [m, m, m, 0]]))


def _check_the_official_region_rule(height, width, window):
    """The official mask (Swin-Transformer-Object-Detection, BasicLayer.forward): label the
    padded map by the three slices [0, P - ws), [P - ws, P - s), [P - s, P) per axis, cut it into
    windows, hide pairs with different labels."""
    shift = window // 2
    hp, wp = -(-height // window) * window, -(-width // window) * window
    labels = torch.zeros(hp, wp)
    count = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            labels[rows, cols] = count
            count += 1
    windows = labels.reshape(hp // window, window, wp // window, window).transpose(1, 2)
    windows = windows.reshape(-1, window * window)
    expected = (windows[:, None, :] != windows[:, :, None]).float() * -100.0
    torch.testing.assert_close(shifted_window_mask(height, width, window, (shift, shift)),
                               expected)


@pytest.mark.parametrize('height,width,window', [(14, 14, 7), (5, 9, 7), (10, 13, 4), (3, 3, 4),
                                                 (17, 6, 5)])
def test_official_mask_is_the_official_region_rule(height, width, window):
    _check_the_official_region_rule(height, width, window)


# ---------------------------------------------------------------- official Swin: transformers

def _assert_stages_equal(model: Swin, ref, x: torch.Tensor, atol: float) -> float:
    with torch.no_grad():
        ours = model(x)
        theirs = ref(x).feature_maps
    worst = 0.0
    for name, their in zip(('s4', 's8', 's16', 's32'), theirs):
        assert ours[name].shape == their.shape, (name, ours[name].shape, their.shape)
        diff = (ours[name] - their).abs().max().item()
        worst = max(worst, diff)
        assert diff < atol, (name, diff)
    return worst


@pytest.mark.parametrize('size', [(160, 224), (37, 50), (100, 72), (20, 200), (64, 64)])
def test_official_swin_equals_transformers_stage_by_stage(size):
    # window 3 on a tiny Swin: 160x224 gives 40x56, 20x28, 10x14, 5x7 maps (none divisible by 3);
    # 37x50 pads every stage and merges odd sizes; 20x200 has stages shorter than the window
    # (transformers, like the official code, still shifts them); 64x64 ends at 2x2 < 3
    cfg = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3)
    model = _tiny_swin(**cfg)
    ref = _transformers_swin(model, 16, cfg['depths'], cfg['num_heads'], 3)
    _assert_stages_equal(model, ref, torch.randn(2, 3, *size), atol=1e-4)


def test_mask_padding_differs_from_official_where_there_is_padding():
    model = _tiny_swin(window_size=3)
    masked = _tiny_swin(window_size=3, mask_padding=True)
    x = torch.randn(1, 3, 36, 36)  # 9x9, 5x5, 3x3, 2x2 maps: padding from stage 1 on
    with torch.no_grad():
        ours, theirs = model(x), masked(x)
    torch.testing.assert_close(ours['s4'], theirs['s4'], atol=1e-5, rtol=0)  # 9 = 3 * 3
    assert (ours['s8'] - theirs['s8']).abs().max() > 1e-3


@pytest.mark.slow
def test_swin_t_equals_transformers_at_512_and_non_square():
    """Swin-T with window 7 at 512 (128, 64, 32, 16 maps: none divisible by 7, the ADE20K
    UperNet training size) and 200x300 (50x75 ... 7x10)."""
    torch.manual_seed(0)
    model = Swin(arch='tiny', drop_path_rate=0.0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('relative_position_bias_table'):
                p.normal_(0, 1.0)
            elif 'norm' in name:
                p.add_(0.1 * torch.randn_like(p))
    ref = _transformers_swin(model, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7)
    for size in [(512, 512), (200, 300)]:
        _assert_stages_equal(model, ref, torch.randn(1, 3, *size), atol=1e-4)


# ---------------------------------------------------------------- sizes, layer ids, registry

@pytest.mark.parametrize('arch,window,published', [('tiny', 7, 28.3e6), ('base', 7, 87.8e6)])
def test_parameter_counts(arch, window, published):
    """Published counts include the classifier (C*1000 + 1000) and the final norm (2C) and have
    no per-level output norms: count the backbone without its output norms, add those."""
    with torch.device('meta'):
        model = Swin(arch=arch, window_size=window)
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith('out_norms'))
    c = model.out_features['s32'].channels
    total = backbone + c * 1000 + 1000 + 2 * c
    assert abs(total - published) / published < 0.01, (arch, total)


def test_window_12_arch_and_overrides():
    with torch.device('meta'):
        model = Swin(arch='large', window_size=12, depths=(2, 2, 2, 2))
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert tuple(table.shape) == (23 * 23, 6)
    assert {n: s.channels for n, s in model.out_features.items()} == {
        's4': 192, 's8': 384, 's16': 768, 's32': 1536}
    assert model.num_layers == 8


def test_layer_id_and_no_weight_decay():
    model = _tiny_swin(depths=(2, 2, 3, 2))
    assert model.num_layers == 9
    assert model.layer_id('patch_embed.proj.weight') == 0
    assert model.layer_id('layers.0.blocks.0.norm1.weight') == 1
    assert model.layer_id('layers.0.blocks.1.mlp.fc2.bias') == 2
    assert model.layer_id('layers.1.downsample.reduction.weight') == 2
    assert model.layer_id('layers.1.blocks.0.attn.qkv.weight') == 3
    assert model.layer_id('layers.3.downsample.norm.weight') == 7
    assert model.layer_id('layers.3.blocks.1.attn.proj.weight') == 9
    assert model.layer_id('out_norms.s32.weight') == 10
    ids = [model.layer_id(n) for n, _ in model.named_parameters()]
    assert ids == sorted(ids) and set(ids) == set(range(11))
    with pytest.raises(ValueError, match='not a Swin parameter'):
        model.layer_id('head.fc.weight')
    nwd = model.no_weight_decay()
    assert len(nwd) == 9 and all(n.endswith('relative_position_bias_table') for n in nwd)


def test_out_indices_and_registry():
    model = MODELS.build(dict(type='Swin', arch='tiny', embed_dim=16, depths=(2, 2, 2, 2),
                              num_heads=(1, 2, 2, 4), window_size=4, out_indices=(1, 2)))
    assert list(model.out_features) == ['s8', 's16'] and len(model.layers) == 3
    feats = model(torch.randn(1, 3, 50, 70))
    check_features(feats, model.out_features, (50, 70), 'Swin')
    with pytest.raises(ValueError, match='arch'):
        Swin(arch='huge')
    with pytest.raises(ValueError, match='out_indices'):
        Swin(out_indices=(4,))


# ---------------------------------------------------------------- converter

def _official_layout(timm_sd: dict, model: torch.nn.Module) -> dict:
    """A timm Swin state dict renamed to the layout of microsoft/Swin-Transformer
    (models/swin_transformer.py): PatchMerging at the END of stages 0..2 (``layers.i.downsample``),
    ``head.weight``, persistent ``attn.relative_position_index`` buffers in every block and an
    ``attn_mask`` buffer in shifted blocks of stages larger than the window; wrapped in 'model'."""
    out = {}
    for key, value in timm_sd.items():
        key = re.sub(r'^layers\.(\d+)\.downsample',
                     lambda m: f'layers.{int(m.group(1)) - 1}.downsample', key)
        out[key.replace('head.fc.', 'head.')] = value
    for name, module in model.named_modules():
        if name.endswith('.attn'):
            out[f'{name}.relative_position_index'] = module.relative_position_index.clone()
        shifted = re.fullmatch(r'layers\.([0-2])\.blocks\.\d*[13579]', name)
        if shifted:  # Swin-T at 224: stages 0-2 are 56, 28, 14 > 7 wide, stage 3 is one window
            windows = (56 // 2 ** int(shifted.group(1)) // 7) ** 2
            out[f'{name}.attn_mask'] = torch.zeros(windows, 49, 49)
    return {'model': out}


def test_convert_official_checkpoint(timm_swin_t, swin_t):
    timm_sd = timm_swin_t.state_dict()
    official = _official_layout(timm_sd, timm_swin_t)
    assert 'layers.0.downsample.reduction.weight' in official['model']
    assert 'layers.3.downsample.reduction.weight' not in official['model']
    converted = convert_swin(official)

    # same tensors under the same names as timm's own filter (minus classifier and final norm)
    filtered = checkpoint_filter_fn(official, timm_swin_t)
    expected = {k: v for k, v in filtered.items() if not k.startswith(('head.', 'norm.'))}
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in expected)

    model = swin_t
    with torch.no_grad():  # forget the weights an earlier test may have loaded
        for p in model.parameters():
            p.normal_()
    report = load_state_dict(model, converted, log=False)
    assert sorted(report.missing) == OUT_NORM_KEYS and not report.unexpected
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = model(x)
        ref = _timm_features_with_our_norms(model, timm_swin_t, x)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=0)


def test_convert_timm_checkpoint_is_identity_on_kept_keys(timm_swin_t):
    timm_sd = timm_swin_t.state_dict()
    converted = CONVERTERS['swin']({'state_dict': timm_sd})
    assert set(converted) == {k for k in timm_sd if not k.startswith(('head.', 'norm.'))}
    with pytest.raises(ValueError, match='absolute_pos_embed'):
        convert_swin({**timm_sd, 'absolute_pos_embed': torch.zeros(1, 3136, 96)})


def test_window_12_checkpoint_into_window_7_model_resizes_tables():
    """Tables resized as the official Swin loads them (microsoft/Swin-Transformer utils.py
    load_pretrained, mmseg's Swin init_weights): each head's (2W-1) x (2W-1) grid interpolated
    bicubically (align_corners=False) to (2W'-1) x (2W'-1)."""
    torch.manual_seed(0)
    src = _tiny_swin(window_size=12).state_dict()
    model = _tiny_swin(window_size=7)
    report = load_state_dict(model, convert_swin(src), log=False)
    assert not report.missing and not report.unexpected
    key = 'layers.2.blocks.1.attn.relative_position_bias_table'
    assert report.resized[key] == ((23 * 23, 2), (13 * 13, 2))
    old = src[key]
    heads = old.shape[1]
    # (23*23, heads) -> (1, heads, 23, 23) -> (1, heads, 13, 13) -> (13*13, heads)
    expected = F.interpolate(old.permute(1, 0).reshape(1, heads, 23, 23), size=(13, 13),
                             mode='bicubic', align_corners=False)
    expected = expected.reshape(heads, 13 * 13).permute(1, 0)
    torch.testing.assert_close(model.state_dict()[key], expected)
