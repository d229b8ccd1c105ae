"""Mask DINO's mask branch: pixel-embedding shapes, the query-pixel product against an explicit
loop, gradients to every input, and the mask -> box helper against torchvision."""
import pytest
import torch
from torchvision.ops import box_convert, masks_to_boxes

from densevit.models.contract import FeatureSpec
from densevit.models.heads.detr.mask_branch import MaskBranch, masks_to_normalized_boxes

HIDDEN, MASK_DIM, S4_CHANNELS = 32, 24, 12


def _branch(**overrides) -> MaskBranch:
    args = dict(input_shapes={'s4': FeatureSpec(S4_CHANNELS, 4), 's8': FeatureSpec(20, 8)},
                in_features=('s4',), hidden_dim=HIDDEN, mask_dim=MASK_DIM, num_groups=8)
    args.update(overrides)
    return MaskBranch(**args)


def _inputs(height: int, width: int, bsz: int = 2, grad: bool = False):
    """Backbone s4 map and encoder memory maps at strides 8, 16, 32 (ceil sizes), coarse first
    to check that the finest one is found whatever the order."""
    gen = torch.Generator().manual_seed(height * 1000 + width)
    s4 = torch.randn(bsz, S4_CHANNELS, -(-height // 4), -(-width // 4), generator=gen)
    memory = [torch.randn(bsz, HIDDEN, -(-height // s), -(-width // s), generator=gen)
              for s in (32, 16, 8)]
    if grad:
        s4.requires_grad_(True)
        for m in memory:
            m.requires_grad_(True)
    return {'s4': s4}, memory


@pytest.mark.parametrize('size', [(64, 64), (96, 128), (100, 76), (36, 52)])
def test_pixel_embedding_and_masks_have_stride_4_shapes(size):
    branch = _branch()
    features, memory = _inputs(*size)
    h4, w4 = features['s4'].shape[-2:]
    pixel = branch.pixel_embedding(features, memory)
    assert pixel.shape == (2, MASK_DIM, h4, w4)
    masks = branch.predict_masks(torch.randn(2, 7, HIDDEN), pixel)
    assert masks.shape == (2, 7, h4, w4)


def test_predict_masks_equals_an_explicit_loop():
    branch = _branch()
    features, memory = _inputs(48, 40)
    pixel = branch.pixel_embedding(features, memory)
    hidden = torch.randn(2, 5, HIDDEN)
    masks = branch.predict_masks(hidden, pixel)
    embed = branch.mask_embed(hidden)  # (B, Q, mask_dim)
    assert embed.shape == (2, 5, MASK_DIM)
    for b in range(2):
        for q in range(5):
            expected = (embed[b, q][:, None, None] * pixel[b]).sum(0)
            torch.testing.assert_close(masks[b, q], expected, atol=1e-5, rtol=1e-5)


def test_mask_embed_is_a_three_layer_mlp():
    branch = _branch()
    assert [tuple(layer.weight.shape) for layer in branch.mask_embed.layers] == [
        (HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (MASK_DIM, HIDDEN)]


def test_gradients_reach_queries_pixels_features_and_memory():
    branch = _branch()
    features, memory = _inputs(64, 48, grad=True)
    pixel = branch.pixel_embedding(features, memory)
    hidden = torch.randn(2, 6, HIDDEN, requires_grad=True)
    branch.predict_masks(hidden, pixel).square().mean().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert features['s4'].grad.abs().sum() > 0
    assert memory[2].grad.abs().sum() > 0  # the finest (stride 8) map is fused
    assert memory[0].grad is None and memory[1].grad is None  # coarser maps are not
    for name, param in branch.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    # and both inputs of predict_masks take gradients on their own
    pixel = pixel.detach().requires_grad_(True)
    hidden.grad = None
    branch.predict_masks(hidden, pixel).sum().backward()
    assert pixel.grad.abs().sum() > 0 and hidden.grad.abs().sum() > 0


def test_mask_branch_checks_its_inputs():
    with pytest.raises(ValueError, match='exactly one'):
        _branch(in_features=('s4', 's8'))
    with pytest.raises(KeyError, match='s2'):
        _branch(in_features=('s2',))
    with pytest.raises(ValueError, match='num_groups'):
        _branch(num_groups=5)
    branch = _branch()
    features, memory = _inputs(32, 32)
    with pytest.raises(ValueError, match=f'\\(B, {HIDDEN}, H, W\\)'):
        branch.pixel_embedding(features, [torch.randn(2, HIDDEN + 1, 4, 4)])


def test_masks_to_normalized_boxes():
    logits = torch.full((2, 3, 10, 12), -1.0)
    logits[0, 0, 2:5, 3:9] = 1.0  # rows 2..4, cols 3..8
    logits[0, 1] = 1.0  # the whole grid
    logits[1, 0, 0, 0] = 1.0  # one pixel at the origin
    logits[1, 1, 4:8, 0:6] = 1.0  # in the valid 8 x 6 region of image 1
    # logits[0, 2] and logits[1, 2] are empty
    boxes = masks_to_normalized_boxes(logits)
    assert boxes.shape == (2, 3, 4)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([6 / 12, 3.5 / 10, 6 / 12, 3 / 10]))
    torch.testing.assert_close(boxes[0, 1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(boxes[1, 0], torch.tensor([0.5 / 12, 0.5 / 10, 1 / 12, 1 / 10]))
    assert (boxes[:, 2] == 0).all()
    # pixel-edge boxes = torchvision's inclusive boxes + 1 on the max corner
    positive = logits.flatten(0, 1) > 0
    nonempty = positive.flatten(1).any(1)
    reference = masks_to_boxes(positive)[nonempty] + torch.tensor([0.0, 0.0, 1.0, 1.0])
    ours = box_convert(boxes.flatten(0, 1)[nonempty] * torch.tensor([12, 10, 12, 10]),
                       'cxcywh', 'xyxy')
    torch.testing.assert_close(ours, reference)
    # normalised by each image's valid region (h, w) in mask pixels
    valid = torch.tensor([[10, 12], [8, 6]])
    boxes = masks_to_normalized_boxes(logits, valid)
    torch.testing.assert_close(boxes[1, 1], torch.tensor([0.5, 0.75, 1.0, 0.5]))
    torch.testing.assert_close(boxes[0, 1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
