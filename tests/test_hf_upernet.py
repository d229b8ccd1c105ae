"""densevit's UperNet Swin-T equals transformers' ``UperNetForSemanticSegmentation`` on the same
weights (the Hub's ``openmmlab/upernet-swin-*`` models were converted by transformers from
mmsegmentation, so this is the reference for official fine-tuned UperNet checkpoints).

The reference is transformers' Swin-T UperNet (ADE20K's 150 labels, auxiliary FCN head on stage
3) built offline with seeded random weights, every BatchNorm given random running statistics and
affine parameters. Its state dict goes through the ``hf_upernet`` converter into the Segmentor of
``configs/upernet/upernet_swin-t_ade20k-512x512-160k.py`` with an empty load report; in eval mode
the logits at the input size (densevit's ``predict`` path, transformers' ``logits``) agree to
1e-4 of their largest magnitude, at 512x512 and at a size no window divides. transformers'
``SwinBackbone`` partitions with ``always_partition=True`` (pad, then shift, whatever the map
size), as the official mmseg / detection Swin does and as densevit's Swin does by default.

The same holds for transformers' ConvNeXt UperNet (``openmmlab/upernet-convnext-*``; a tiny
ConvNeXt here, every LayerNorm and layer scale randomised too) against a Segmentor over
``TimmBackbone(out_norm='LN2d', pad_input=False)``, at a square size and at one 32 does not divide
(transformers' ConvNeXt floors its maps there; densevit's default padding would not).
"""
from __future__ import annotations

import os.path as osp

import pytest
import torch
from mmengine.config import Config

transformers = pytest.importorskip('transformers')

from densevit.checkpoint import get_converter  # noqa: E402
from densevit.checkpoint.loading import load_state_dict  # noqa: E402
from densevit.checkpoint.reading import read_state_dict  # noqa: E402
from densevit.registry import MODELS  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/upernet/upernet_swin-t_ade20k-512x512-160k.py')
RTOL = 1e-4  # of the largest logit magnitude
STAGES = ['stage1', 'stage2', 'stage3', 'stage4']


def swin_upernet_config(**swin) -> 'transformers.UperNetConfig':
    swin = {**dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                   drop_path_rate=0.3, out_features=STAGES), **swin}
    return transformers.UperNetConfig(backbone_config=transformers.SwinConfig(**swin),
                                      num_labels=150, use_auxiliary_head=True)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Move every tensor off the published initialisation (zero biases, unit LayerNorms, fresh
    BatchNorm statistics), so that each of them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)
                module.bias.copy_(torch.randn(c, generator=g) * 0.2)
                module.num_batches_tracked.fill_(1000)
        for name, t in model.named_parameters():
            if '.batch_norm.' not in name:
                t.add_(torch.randn(t.shape, generator=g) * 0.02)


@pytest.fixture(scope='module')
def swin_t_pair():
    """(transformers reference, densevit Segmentor from the Swin-T config), same weights."""
    torch.manual_seed(0)
    reference = transformers.UperNetForSemanticSegmentation(swin_upernet_config()).eval()
    randomise(reference, seed=1)
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone_checkpoint = None
    ours = MODELS.build(cfg.model).eval()
    report = load_state_dict(ours, get_converter('hf_upernet')(reference.state_dict()), log=False)
    assert report.clean and not report.resized, str(report)
    return reference, ours


def _max_rel(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def check_logits(reference, ours, height: int, width: int, num_classes: int = 150) -> None:
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(2))
    captured = {}
    hooks = [reference.backbone.register_forward_hook(
                 lambda m, i, out: captured.__setitem__('ref', out.feature_maps)),
             ours.backbone.register_forward_hook(
                 lambda m, i, out: captured.__setitem__('ours', out))]
    try:
        with torch.no_grad():
            expected = reference(pixel_values=image).logits[0]
            got = ours.predict(image)[0].seg_logits.data
    finally:
        for hook in hooks:
            hook.remove()
    # stage by stage first, so a failure names where it starts
    ours_maps = [captured['ours'][f's{4 * 2 ** i}'] for i in range(4)]
    for stage, (a, b) in enumerate(zip(ours_maps, captured['ref'])):
        assert a.shape == b.shape, f'stage {stage + 1}: {tuple(a.shape)} vs {tuple(b.shape)}'
        assert _max_rel(a, b) < RTOL, f'stage {stage + 1} features differ'
    assert got.shape == expected.shape == (num_classes, height, width)
    assert _max_rel(got, expected) < RTOL, f'logits differ by {_max_rel(got, expected):.2e}'
    # the auxiliary head (transformers returns no auxiliary logits: run both on their features)
    with torch.no_grad():
        aux_expected = reference.auxiliary_head(captured['ref'])
        aux_got = ours.auxiliary_heads[0](captured['ours'])
    assert _max_rel(aux_got, aux_expected) < RTOL


def test_matches_transformers_where_windows_do_not_divide_the_maps(swin_t_pair):
    """230x290: the image is padded to the patch (58x73 tokens), maps 58x73, 29x37, 15x19, 8x10
    (odd merges; no side a multiple of the window 7)."""
    check_logits(*swin_t_pair, 230, 290)


@pytest.mark.slow
def test_matches_transformers_at_512(swin_t_pair):
    check_logits(*swin_t_pair, 512, 512)


def test_hub_file_layout_converts_like_the_in_memory_one(tmp_path):
    """``save_pretrained`` writes the names the Hub files have (``attention.self.query``,
    ``intermediate.dense``, no ``swin.``); both give the same densevit state dict."""
    config = swin_upernet_config(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
    config.hidden_size, config.auxiliary_channels = 32, 16
    torch.manual_seed(0)
    model = transformers.UperNetForSemanticSegmentation(config).eval()
    model.save_pretrained(tmp_path)
    saved = read_state_dict(str(tmp_path / 'model.safetensors'))
    assert any('.attention.self.query.' in k for k in saved)
    assert any(k.startswith('backbone.encoder.') for k in saved)

    convert = get_converter('hf_upernet')
    from_file, from_memory = convert(saved), convert(model.state_dict())
    assert sorted(from_file) == sorted(from_memory)
    for key, value in from_memory.items():
        assert torch.equal(from_file[key], value), key


# ---------------------------------------------------------------- ConvNeXt

DEPTHS, WIDTHS = (1, 1, 2, 1), (16, 24, 32, 48)  # a tiny ConvNeXt, to stay fast


def convnext_upernet_config() -> 'transformers.UperNetConfig':
    backbone = transformers.ConvNextConfig(hidden_sizes=list(WIDTHS), depths=list(DEPTHS),
                                           out_features=STAGES)
    return transformers.UperNetConfig(backbone_config=backbone, hidden_size=16,
                                      auxiliary_channels=8, num_labels=5, use_auxiliary_head=True)


# the densevit Segmentor the converted ConvNeXt checkpoint loads into (what the converter's
# docstring prescribes: timm's ConvNeXt with per-level LN2d output norms, the image unpadded)
CONVNEXT_SEGMENTOR = dict(
    type='Segmentor',
    backbone=dict(type='TimmBackbone', model_name='convnext_tiny', out_norm='LN2d',
                  pad_input=False, model_kwargs=dict(depths=DEPTHS, dims=WIDTHS)),
    decode_head=dict(type='UPerHead', in_features=('s4', 's8', 's16', 's32'), channels=16,
                     pool_scales=(1, 2, 3, 6), num_classes=5),
    auxiliary_head=dict(type='FCNHead', in_features=('s16',), channels=8, num_convs=1,
                        num_classes=5))


def randomise_norms_and_scales(model: torch.nn.Module, seed: int) -> None:
    """LayerNorm affine parameters far from (1, 0) and ConvNeXt's layer scales far from their
    1e-6 start, so that every norm and every residual branch changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.2)
        for name, t in model.named_parameters():
            if name.endswith('layer_scale_parameter'):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)


@pytest.fixture(scope='module')
def convnext_pair():
    """(transformers ConvNeXt UperNet, densevit Segmentor over TimmBackbone), same weights."""
    torch.manual_seed(0)
    reference = transformers.UperNetForSemanticSegmentation(convnext_upernet_config()).eval()
    randomise(reference, seed=1)
    randomise_norms_and_scales(reference, seed=3)
    ours = MODELS.build(CONVNEXT_SEGMENTOR).eval()
    report = load_state_dict(ours, get_converter('hf_upernet')(reference.state_dict()), log=False)
    assert report.clean and not report.resized, str(report)
    return reference, ours


@pytest.mark.parametrize('height, width', [(256, 256), (230, 290)])
def test_convnext_matches_transformers(convnext_pair, height, width):
    """256x256, and 230x290, which 32 does not divide: transformers' ConvNeXt floors every level
    (57x72, 28x36, 14x18, 7x9), and so does TimmBackbone(pad_input=False)."""
    reference, ours = convnext_pair
    check_logits(reference, ours, height, width, num_classes=5)
    strides = (4, 8, 16, 32)
    expected = [(height // 4 // 2 ** i, width // 4 // 2 ** i) for i in range(4)]
    with torch.no_grad():
        maps = ours.backbone(torch.zeros(1, 3, height, width))
    assert [tuple(maps[f's{s}'].shape[-2:]) for s in strides] == expected


def test_convnext_output_norms_and_layer_scales_matter(convnext_pair):
    """The norms the converter places (out_norms) and the layer scales change the logits: with
    either reset, densevit no longer matches (so the parity above is not vacuous)."""
    reference, ours = convnext_pair
    image = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(pixel_values=image).logits[0]
        for reset in ('out_norms.s8.weight', 'model.model.stages.2.blocks.1.gamma'):
            param = ours.backbone.get_parameter(reset)
            kept = param.detach().clone()
            param.fill_(1.0)
            try:
                got = ours.predict(image)[0].seg_logits.data
            finally:
                param.copy_(kept)
            assert _max_rel(got, expected) > 1e-3, reset


def test_convnext_hub_file_layout_converts_like_the_in_memory_one(tmp_path):
    torch.manual_seed(0)
    model = transformers.UperNetForSemanticSegmentation(convnext_upernet_config()).eval()
    model.save_pretrained(tmp_path)
    saved = read_state_dict(str(tmp_path / 'model.safetensors'))
    convert = get_converter('hf_upernet')
    from_file, from_memory = convert(saved), convert(model.state_dict())
    assert sorted(from_file) == sorted(from_memory)
    for key, value in from_memory.items():
        assert torch.equal(from_file[key], value), key


def test_convnext_stem_output_norm_is_refused():
    backbone = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                           out_features=['stem'] + STAGES)
    model = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=16, auxiliary_channels=8, num_labels=3))
    with pytest.raises(ValueError, match=r'hidden_states_norms\.stem\.weight'):
        get_converter('hf_upernet')(model.state_dict())


def test_keys_of_no_part_are_refused():
    model = transformers.UperNetForSemanticSegmentation(swin_upernet_config(
        embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]))
    state = {**model.state_dict(), 'decode_head.extra.weight': torch.zeros(1)}
    with pytest.raises(ValueError, match=r'decode_head\.extra\.weight'):
        get_converter('hf_upernet')(state)
