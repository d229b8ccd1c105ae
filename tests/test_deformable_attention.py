"""densevit.ops multi-scale deformable attention against an explicit per-point bilinear reference
(forward and gradients) and against transformers' Deformable DETR (op and module)."""
import math

import pytest
import torch

from densevit.ops import MultiScaleDeformableAttention, multi_scale_deformable_attention

SHAPES = [(6, 10), (3, 5), (4, 4), (1, 2)]  # non-square levels of different sizes


def reference_msda(value, shapes, locations, weights):
    """Loop over levels and points; bilinear interpolation written out: pixel coordinates
    x * W - 0.5 (align_corners=False), four corners floor / floor + 1 with weights
    (1 - dx)(1 - dy) ..., a corner outside the map reads 0."""
    bsz, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = value.new_zeros(bsz, queries, heads, dim)
    batch = torch.arange(bsz)[:, None, None]
    head = torch.arange(heads)[None, None, :]
    start = 0
    for level, (height, width) in enumerate(shapes):
        level_value = value[:, start:start + height * width]  # (B, H*W, heads, E), row-major
        start += height * width
        for point in range(points):
            x = locations[:, :, :, level, point, 0] * width - 0.5  # (B, Q, heads)
            y = locations[:, :, :, level, point, 1] * height - 0.5
            x0, y0 = x.detach().floor(), y.detach().floor()
            for cx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                for cy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
                    index = (cy.clamp(0, height - 1) * width + cx.clamp(0, width - 1)).long()
                    corner = level_value[batch, index, head]  # (B, Q, heads, E)
                    scale = weights[:, :, :, level, point] * wx * wy * inside
                    out = out + scale[..., None] * corner
    return out.reshape(bsz, queries, heads * dim)


def _inputs(shapes=SHAPES, bsz=2, queries=7, heads=3, dim=4, points=3, seed=0,
            dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(bsz, total, heads, dim, generator=gen, dtype=dtype)
    # beyond the map on every side, so corners fall outside and whole samples read zeros
    locations = torch.rand(bsz, queries, heads, len(shapes), points, 2, generator=gen,
                           dtype=dtype) * 1.6 - 0.3
    # exactly on the borders and on the centre: x, y in {0, 0.5, 1} (exact in both formulas)
    border = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    grid = torch.stack(torch.meshgrid(border, border, indexing='xy'), -1).reshape(-1, 2)
    locations[0, :, 0, :, 0] = grid[torch.arange(queries) % len(grid), None]
    locations[1, 0, :, :, :] = torch.tensor([1.0, 0.0], dtype=dtype)
    weights = torch.rand(bsz, queries, heads, len(shapes), points, generator=gen, dtype=dtype)
    return value, torch.tensor(shapes), locations, weights


def test_matches_bilinear_reference_forward_and_grads():
    value, shapes, locations, weights = _inputs()
    inputs = [t.requires_grad_() for t in (value, locations, weights)]
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = reference_msda(value, SHAPES, locations, weights)
    assert out.shape == (2, 7, 3 * 4)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)

    cotangent = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * cotangent).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * cotangent).sum(), inputs)
    for name, got, want in zip(('value', 'sampling_locations', 'attention_weights'), grads,
                               expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10, msg=f'grad {name}')
    # the border points did exercise outside corners: a sample at (1, 0) reads 1/4 of a pixel
    assert (grads[1][1, 0].abs() > 0).any()


def test_inference_path_matches_reference():
    """Without autograd the op takes another path (weights multiplied into the samples in place,
    the sum over points as a matrix-vector product); it must give the reference's values, as the
    autograd path does, and leave its inputs as they were."""
    value, shapes, locations, weights = _inputs(seed=7)
    inputs = [t.clone() for t in (value, locations, weights)]
    with torch.no_grad():
        out = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(out, reference_msda(value, SHAPES, locations, weights),
                               atol=1e-10, rtol=1e-10)
    for before, after in zip(inputs, (value, locations, weights)):
        assert torch.equal(before, after)
    autograd_out = multi_scale_deformable_attention(value.requires_grad_(), shapes, locations,
                                                    weights)
    assert autograd_out.requires_grad
    torch.testing.assert_close(out, autograd_out.detach(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('needs_grad', [(True, False, False), (False, True, False),
                                        (False, False, True), (False, True, True)])
def test_gradients_of_some_inputs(needs_grad):
    """Gradients of any subset of the inputs equal the reference's, also from a second backward
    through the same graph (retain_graph)."""
    value, shapes, locations, weights = _inputs(seed=8)
    inputs = [t.requires_grad_(need) for t, need in zip((value, locations, weights), needs_grad)]
    wanted = [t for t in inputs if t.requires_grad]
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = reference_msda(value, SHAPES, locations, weights)
    cotangent = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(9))
    expected_grads = torch.autograd.grad((expected * cotangent).sum(), wanted)
    for _ in range(2):
        grads = torch.autograd.grad((out * cotangent).sum(), wanted, retain_graph=True)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_points_off_the_map_read_zero():
    """x = -1 or 2 is more than a pixel outside every level: all four corners read zero."""
    value, shapes, locations, weights = _inputs(seed=2)
    locations[..., 0] = torch.where(locations[..., 0] < 0.5, -1.0, 2.0)
    assert multi_scale_deformable_attention(value, shapes, locations, weights).abs().max() == 0


def test_strided_value_layout():
    """Any strides of value give the result of the contiguous layout."""
    value, shapes, locations, weights = _inputs(seed=3)
    strided = value.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not strided.is_contiguous()
    out = multi_scale_deformable_attention(strided, shapes, locations, weights)
    torch.testing.assert_close(out, multi_scale_deformable_attention(value, shapes, locations,
                                                                     weights), atol=0, rtol=0)


def test_one_image_gradients_match_the_reference():
    """With one image the op's internal (image-level, head, query, point) weights are a strided
    view of the input rather than a copy; the gradients still come out right."""
    value, shapes, locations, weights = (t[:1].clone() if t.dim() > 2 else t
                                         for t in _inputs(seed=4))
    inputs = [t.requires_grad_() for t in (value, locations, weights)]
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = reference_msda(value, SHAPES, locations, weights)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), inputs)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_float32_and_list_shapes():
    value, shapes, locations, weights = _inputs(dtype=torch.float32, seed=4)
    out = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_msda(value, SHAPES, locations, weights),
                               atol=1e-5, rtol=1e-5)


def test_mixed_dtypes_run_in_the_widest():
    """As autocast does for grid_sample: a bfloat16 value with float32 locations and weights."""
    value, shapes, locations, weights = _inputs(dtype=torch.float32, seed=6)
    value = value.bfloat16()
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_msda(value.float(), SHAPES, locations, weights),
                               atol=1e-5, rtol=1e-5)


def _transformers_op():
    pytest.importorskip('transformers')
    # without the optional `kernels` package this is the pure-PyTorch grid_sample path
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        MultiScaleDeformableAttention as Reference)
    return Reference()


def test_matches_transformers_op():
    reference = _transformers_op()
    value, shapes, locations, weights = _inputs(seed=5)
    inputs = [t.requires_grad_() for t in (value, locations, weights)]
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    expected = reference(value, shapes, SHAPES, starts, locations, weights, 64)
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('change,message', [
    (dict(value=torch.zeros(2, 90, 3, 4)), r'value has 90 positions but spatial_shapes'),
    (dict(value=torch.zeros(2, 95, 12)), r'value must be \(B, sum of H\*W, heads, head_dim\)'),
    (dict(shapes=torch.tensor([[6.0, 10.0]])), 'must hold integers'),
    (dict(shapes=torch.tensor([6, 10])), r'spatial_shapes must be \(levels, 2\)'),
    (dict(shapes=[(6, 10), (0, 5)]), 'positive'),
    (dict(locations=torch.zeros(2, 7, 3, 4, 3)), r'sampling_locations must be \(B, queries'),
    (dict(locations=torch.zeros(2, 7, 2, 4, 3, 2)), r'expected \(2, 7, 3, 4, 3, 2\)'),
    (dict(weights=torch.zeros(2, 7, 3, 4, 2)),
     r'attention_weights must have shape .* = \(2, 7, 3, 4, 3\), got \(2, 7, 3, 4, 2\)'),
    (dict(weights=torch.zeros(2, 7, 3, 4, 3, dtype=torch.long)),
     'attention_weights must be a float tensor'),
])
def test_bad_arguments(change, message):
    value, shapes, locations, weights = _inputs(dtype=torch.float32)
    args = dict(value=value, shapes=shapes, locations=locations, weights=weights)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        multi_scale_deformable_attention(args['value'], args['shapes'], args['locations'],
                                         args['weights'])


# --------------------------------------------------------------------------- the module

def _module_inputs(module, shapes=SHAPES[:3], bsz=2, queries=5, box=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    query = torch.randn(bsz, queries, module.embed_dim, generator=gen)
    value = torch.randn(bsz, total, module.embed_dim, generator=gen)
    ref = torch.rand(bsz, queries, len(shapes), 4 if box else 2, generator=gen)
    return query, ref, value, torch.tensor(shapes)


def test_init_offsets_point_in_eight_directions():
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=8, num_levels=3, num_points=4)
    assert not module.sampling_offsets.weight.any() and not module.attention_weights.weight.any()
    assert not module.attention_weights.bias.any()
    # head h points at angle h * 45 degrees, larger coordinate scaled to 1: E, SE, S, ... in
    # image coordinates (y down); point p sits p + 1 pixels out on every level
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1],
                               [1, -1]], dtype=torch.float32)
    expected = directions[:, None, None] * torch.arange(1, 5.0)[None, None, :, None]
    bias = module.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    torch.testing.assert_close(bias, expected.expand(8, 3, 4, 2), atol=1e-6, rtol=0)
    for proj in (module.value_proj, module.output_proj):
        assert not proj.bias.any()
        bound = math.sqrt(6 / (2 * 32))  # xavier_uniform on (32, 32)
        assert proj.weight.abs().max() <= bound and proj.weight.std() > bound / 3


@pytest.mark.parametrize('box', [False, True])
def test_module_output_shape_and_padding(box):
    module = MultiScaleDeformableAttention(embed_dim=24, num_heads=3, num_levels=3, num_points=2)
    with torch.no_grad():  # non-trivial weights, so that any leak of padded values shows
        module.attention_weights.weight.normal_()
        module.sampling_offsets.weight.normal_(std=0.5)
    query, ref, value, shapes = _module_inputs(module, box=box)
    pad = torch.zeros(value.shape[:2], dtype=torch.bool)
    pad[0, 10:60] = True
    pad[1, -7:] = True
    out = module(query, ref, value, shapes, pad)
    assert out.shape == query.shape
    changed = value.clone()
    changed[pad] = torch.randn(int(pad.sum()), value.shape[-1]) * 100
    torch.testing.assert_close(module(query, ref, changed, shapes, pad), out, atol=0, rtol=0)
    assert not torch.allclose(module(query, ref, changed, shapes), out)  # unmasked it does change


def test_module_bad_arguments():
    with pytest.raises(ValueError, match='embed_dim 30 must be divisible by num_heads 8'):
        MultiScaleDeformableAttention(embed_dim=30)
    module = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=3, num_points=2)
    query, ref, value, shapes = _module_inputs(module)
    with pytest.raises(ValueError, match=r'\(num_levels, 2\) = \(3, 2\), got 2 levels'):
        module(query, ref, value, shapes[:2])
    with pytest.raises(ValueError, match='reference_points must be'):
        module(query, ref[..., :1], value, shapes)
    with pytest.raises(ValueError, match='value_padding_mask must be'):
        module(query, ref, value, shapes, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match='value has 80 positions'):
        module(query, ref, value[:, :80], shapes)


@pytest.mark.parametrize('box', [False, True])
def test_module_matches_transformers(box):
    pytest.importorskip('transformers')
    from transformers import DeformableDetrConfig
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrMultiscaleDeformableAttention as Reference)

    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=3, num_points=2)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(std=0.3)
    config = DeformableDetrConfig(d_model=32, num_feature_levels=3)
    reference = Reference(config, num_heads=4, n_points=2)
    reference.load_state_dict(module.state_dict())  # same names, 1:1
    module, reference = module.double(), reference.double()

    query, ref, value, shapes = (t.double() if t.is_floating_point() else t
                                 for t in _module_inputs(module, box=box, seed=3))
    pad = torch.zeros(value.shape[:2], dtype=torch.bool)
    pad[1, 30:] = True
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    expected, _ = reference(query, attention_mask=~pad, encoder_hidden_states=value,
                            reference_points=ref, spatial_shapes=shapes,
                            spatial_shapes_list=[tuple(s) for s in shapes.tolist()],
                            level_start_index=starts)
    out = module(query, ref, value, shapes, pad)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), list(module.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(reference.parameters()))
    for (name, _), got, want in zip(module.named_parameters(), grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10, msg=name)
