"""Swin backbone and its checkpoint converter, checked against timm's Swin and against a dense
(full-attention, explicitly masked) formulation of shifted-window attention."""
import re

import pytest
import timm
import torch
from timm.models.swin_transformer import checkpoint_filter_fn

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
    return Swin(arch='tiny').eval()


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
def test_any_size_equals_dense_window_attention(size):
    # 64: every map divisible; 37x50: padding and odd merges; 100x72: shift on stages 1-3 with
    # padding; 20x200: one axis shorter than a window (no shift there), the other long
    model = _tiny_swin()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
        ref = _dense_swin(model, x)
    check_features(ours, model.out_features, size, 'Swin')
    for name in ours:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-5)


def test_padding_does_not_leak():
    """A token's output depends only on real tokens: growing the image at the bottom-right by a
    block that lies in no window of the kept region changes nothing there (first stage only)."""
    model = _tiny_swin(out_indices=(0,))
    x = torch.randn(1, 3, 4 * 10, 4 * 10)  # 10x10 tokens: windows 4 -> padded to 12
    with torch.no_grad():
        small = model(x[..., :4 * 9, :4 * 9])['s4']  # 9x9 tokens, also padded to 12
        # plain blocks see cells [0,4),[4,8),[8,..); shifted blocks [0,2),[2,6),[6,10): token rows
        # 0..5 never share a cell with row 9, so they must agree between 9x9 and 10x10
        large = model(x)['s4']
    torch.testing.assert_close(small[..., :6, :6], large[..., :6, :6], atol=1e-5, rtol=1e-5)


def test_shifted_window_mask_by_hand():
    assert shifted_window_mask(4, 6, 2, (0, 0)) is None  # divisible, not shifted: no mask
    # 3x2 map, window 2, rows shifted by 1: padded to 4 rows, rolled up by one row
    # -> window 0 holds original rows 1-2 (one cell), window 1 holds the padding row and row 0
    mask = shifted_window_mask(3, 2, 2, (1, 0))
    m = -100.0
    expected = torch.tensor([[[0., 0, 0, 0]] * 4,
                             [[0, 0, m, m], [0, 0, m, m], [m, m, 0, 0], [m, m, 0, 0]]])
    torch.testing.assert_close(mask, expected)


@pytest.mark.slow
def test_swin_t_at_512_and_non_square(swin_t):
    model = swin_t
    for size in [(512, 512), (200, 300)]:
        with torch.no_grad():
            feats = model(torch.randn(1, 3, *size))
        check_features(feats, model.out_features, size, 'Swin-T')
        assert all(torch.isfinite(f).all() for f in feats.values())


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
    torch.manual_seed(0)
    src = _tiny_swin(window_size=12).state_dict()
    model = _tiny_swin(window_size=7)
    report = load_state_dict(model, convert_swin(src), log=False)
    assert not report.missing and not report.unexpected
    assert report.resized['layers.0.blocks.0.attn.relative_position_bias_table'] == (
        (23 * 23, 1), (13 * 13, 1))
