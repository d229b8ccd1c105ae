"""DETR's sine position codes against a hand computation, and the plain DETR head: shapes, the
padding mask, official parameter names, losses and a short overfit."""
import math

import pytest
import torch

from densevit.models.contract import FeatureSpec
from densevit.models.heads.detr.detr import DETR
from densevit.models.heads.detr.position_encoding import (coordinate_sine_embedding,
                                                          resize_padding_mask,
                                                          sine_position_embedding)


def _code(value: float, feature: int, num_pos_feats: int, temperature: float = 10000.0) -> float:
    """Feature ``feature`` of the 1-d sine code of ``value``, from the definition."""
    divisor = temperature ** (2 * (feature // 2) / num_pos_feats)
    return math.sin(value / divisor) if feature % 2 == 0 else math.cos(value / divisor)


# ---------------------------------------------------------------- position encodings

@pytest.mark.parametrize('offset', [0.0, -0.5])
def test_sine_position_embedding_matches_hand_computation(offset):
    feats, valid_h, valid_w = 8, 4, 5
    mask = torch.ones(1, 6, 9, dtype=torch.bool)
    mask[:, :valid_h, :valid_w] = False
    pos = sine_position_embedding(mask, num_pos_feats=feats, offset=offset)
    assert pos.shape == (1, 2 * feats, 6, 9)
    for i, j in [(0, 0), (1, 3), (3, 4), (2, 0)]:
        y = (i + 1 + offset) / valid_h * 2 * math.pi
        x = (j + 1 + offset) / valid_w * 2 * math.pi
        expected = [_code(y, c, feats) for c in range(feats)] + \
                   [_code(x, c, feats) for c in range(feats)]
        torch.testing.assert_close(pos[0, :, i, j], torch.tensor(expected), atol=1e-5, rtol=0)


def test_sine_position_embedding_default_width_and_temperature_pair():
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    pos = sine_position_embedding(mask)  # DETR's num_pos_feats=128
    assert pos.shape == (1, 256, 3, 4)
    y, x = 2 / 3 * 2 * math.pi, 1 / 4 * 2 * math.pi
    expected = [_code(y, c, 128) for c in range(128)] + [_code(x, c, 128) for c in range(128)]
    torch.testing.assert_close(pos[0, :, 1, 0], torch.tensor(expected), atol=1e-5, rtol=0)
    # DINO's PositionEmbeddingSineHW: separate temperatures for y and x
    pos_hw = sine_position_embedding(mask, num_pos_feats=4, temperature=(20.0, 30.0))
    expected = [_code(y, c, 4, 20.0) for c in range(4)] + [_code(x, c, 4, 30.0) for c in range(4)]
    torch.testing.assert_close(pos_hw[0, :, 1, 0], torch.tensor(expected), atol=1e-5, rtol=0)


def test_sine_position_embedding_ignores_padding_inside_the_image():
    unpadded = sine_position_embedding(torch.zeros(1, 4, 5, dtype=torch.bool), num_pos_feats=16)
    mask = torch.ones(2, 7, 11, dtype=torch.bool)
    mask[0, :4, :5] = False
    mask[1, :6, :5] = False  # the other image of the batch is taller
    padded = sine_position_embedding(mask, num_pos_feats=16)
    torch.testing.assert_close(padded[0:1, :, :4, :5], unpadded, atol=1e-6, rtol=0)


def test_resize_padding_mask_keeps_the_first_pixel_valid():
    mask = torch.ones(1, 64, 64, dtype=torch.bool)
    mask[:, :20, :40] = False
    small = resize_padding_mask(mask, (2, 2))
    assert small.tolist() == [[[False, False], [True, True]]]
    with pytest.raises(ValueError, match='bool'):
        resize_padding_mask(mask.float(), (2, 2))


def test_coordinate_sine_embedding_orders():
    feats = 6
    point = torch.tensor([[[0.3, 0.8]]])  # (B, Q, 2) x, y
    box = torch.tensor([[[0.3, 0.8, 0.2, 0.1]]])  # cx, cy, w, h
    codes = {name: [_code(v * 2 * math.pi, c, feats) for c in range(feats)]
             for name, v in zip('xywh', [0.3, 0.8, 0.2, 0.1])}

    dino_point = coordinate_sine_embedding(point, num_pos_feats=feats)  # y before x
    assert dino_point.shape == (1, 1, 2 * feats)
    torch.testing.assert_close(dino_point[0, 0], torch.tensor(codes['y'] + codes['x']))
    dino_box = coordinate_sine_embedding(box, num_pos_feats=feats)
    torch.testing.assert_close(dino_box[0, 0],
                               torch.tensor(codes['y'] + codes['x'] + codes['w'] + codes['h']))
    deformable_box = coordinate_sine_embedding(box, num_pos_feats=feats, swap_xy=False)
    torch.testing.assert_close(deformable_box[0, 0],
                               torch.tensor(codes['x'] + codes['y'] + codes['w'] + codes['h']))
    assert coordinate_sine_embedding(torch.rand(2, 5, 4)).shape == (2, 5, 512)
    with pytest.raises(ValueError, match='2 .x, y. or 4'):
        coordinate_sine_embedding(torch.rand(2, 5, 3))


# ---------------------------------------------------------------- DETR head

IN_CHANNELS, HIDDEN, QUERIES, CLASSES, DEC_LAYERS = 16, 32, 10, 5, 3


def _head(**overrides) -> DETR:
    args = dict(input_shapes={'s32': FeatureSpec(IN_CHANNELS, 32), 's16': FeatureSpec(8, 16)},
                in_features=('s32',), num_classes=CLASSES, hidden_dim=HIDDEN,
                num_queries=QUERIES, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=DEC_LAYERS, ffn_dim=64)
    args.update(overrides)
    return DETR(**args)


def _padded_batch(seed: int = 0):
    """Two images padded to 256 x 192: the first fills it, the second is 160 x 128 (5 x 4 of the
    8 x 6 stride-32 map)."""
    gen = torch.Generator().manual_seed(seed)
    features = {'s32': torch.randn(2, IN_CHANNELS, 8, 6, generator=gen),
                's16': torch.randn(2, 8, 16, 12, generator=gen)}
    padding_mask = torch.zeros(2, 256, 192, dtype=torch.bool)
    padding_mask[1, 160:] = True
    padding_mask[1, :, 128:] = True
    targets = [dict(labels=torch.tensor([1, 3]), boxes=torch.tensor([[0.3, 0.4, 0.2, 0.3],
                                                                     [0.7, 0.6, 0.4, 0.2]])),
               dict(labels=torch.tensor([0]), boxes=torch.tensor([[0.5, 0.5, 0.6, 0.5]]))]
    return features, padding_mask, targets


def test_detr_outputs_have_the_declared_shapes():
    head = _head().eval()
    features, padding_mask, _ = _padded_batch()
    out = head(features, padding_mask)
    assert out['logits'].shape == (2, QUERIES, CLASSES + 1)
    assert out['boxes'].shape == (2, QUERIES, 4)
    assert ((out['boxes'] >= 0) & (out['boxes'] <= 1)).all()
    assert len(out['aux']) == DEC_LAYERS - 1
    for aux in out['aux']:
        assert aux['logits'].shape == (2, QUERIES, CLASSES + 1)
        assert aux['boxes'].shape == (2, QUERIES, 4)
    pred = head.predict(features, padding_mask)
    assert set(pred) == {'logits', 'boxes'}
    torch.testing.assert_close(pred['logits'], out['logits'])
    assert head.class_loss == 'ce' and head.with_masks is False and head.num_classes == CLASSES


def test_detr_ignores_features_in_the_padding():
    head = _head().eval()
    features, padding_mask, _ = _padded_batch()
    with torch.no_grad():
        reference = head(features, padding_mask)
        changed = {k: v.clone() for k, v in features.items()}
        changed['s32'][1, :, 5:] = 100.0  # padded rows of image 1
        changed['s32'][1, :, :, 4:] = -100.0  # padded columns
        out = head(changed, padding_mask)
        torch.testing.assert_close(out['logits'], reference['logits'], atol=1e-5, rtol=0)
        torch.testing.assert_close(out['boxes'], reference['boxes'], atol=1e-5, rtol=0)
        # the same change counts once the mask no longer hides it
        unmasked = head(changed, torch.zeros_like(padding_mask))
        assert not torch.allclose(unmasked['logits'][1], reference['logits'][1], atol=1e-3)
        # and so does a change inside the image
        changed['s32'][1, :, 0, 0] += 5.0
        inside = head(changed, padding_mask)
        assert not torch.allclose(inside['logits'][1], reference['logits'][1], atol=1e-3)


def _official_detr_keys(enc_layers: int, dec_layers: int) -> set[str]:
    """The head's keys in facebookresearch/detr's checkpoints (models/detr.py, transformer.py),
    spelled out from the official module tree; the backbone's keys are left out."""
    attn = ['in_proj_weight', 'in_proj_bias', 'out_proj.weight', 'out_proj.bias']
    wb = ['weight', 'bias']
    keys = {'query_embed.weight', 'input_proj.weight', 'input_proj.bias',
            'class_embed.weight', 'class_embed.bias',
            'transformer.decoder.norm.weight', 'transformer.decoder.norm.bias'}
    keys |= {f'bbox_embed.layers.{i}.{p}' for i in range(3) for p in wb}
    for i in range(enc_layers):
        prefix = f'transformer.encoder.layers.{i}'
        keys |= {f'{prefix}.self_attn.{p}' for p in attn}
        keys |= {f'{prefix}.{m}.{p}' for m in ('linear1', 'linear2', 'norm1', 'norm2') for p in wb}
    for i in range(dec_layers):
        prefix = f'transformer.decoder.layers.{i}'
        keys |= {f'{prefix}.{a}.{p}' for a in ('self_attn', 'multihead_attn') for p in attn}
        keys |= {f'{prefix}.{m}.{p}' for m in ('linear1', 'linear2', 'norm1', 'norm2', 'norm3')
                 for p in wb}
    return keys


def test_detr_parameter_names_are_the_official_ones():
    head = _head()
    keys = {k for k in head.state_dict() if not k.startswith('criterion.')}
    assert keys == _official_detr_keys(2, DEC_LAYERS)
    assert head.class_embed.weight.shape == (CLASSES + 1, HIDDEN)


def test_detr_rejects_bad_configs():
    with pytest.raises(ValueError, match='exactly one'):
        _head(in_features=('s16', 's32'))
    with pytest.raises(KeyError, match='s8'):
        _head(in_features=('s8',))
    with pytest.raises(ValueError, match="class_loss='ce'"):
        _head(criterion=dict(type='SetCriterion', class_loss='focal',
                             matcher=dict(type='HungarianMatcher')))


def _finite_with_grads(losses: dict, head: DETR) -> None:
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    for name in ('input_proj.weight', 'query_embed.weight', 'class_embed.weight',
                 'bbox_embed.layers.2.weight', 'transformer.encoder.layers.0.linear1.weight'):
        grad = head.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_detr_loss_keys_are_finite_and_reach_the_parameters():
    head = _head()
    features, padding_mask, targets = _padded_batch()
    losses = head.loss(features, padding_mask, targets)
    expected = {'loss_cls', 'loss_bbox', 'loss_giou'}
    expected |= {f'd{i}.{name}' for i in range(DEC_LAYERS - 1)
                 for name in ('loss_cls', 'loss_bbox', 'loss_giou')}
    assert expected <= set(losses), sorted(losses)
    assert not any(k.startswith(('enc.', 'dn.')) or 'mask' in k or 'dice' in k for k in losses)
    _finite_with_grads({k: losses[k] for k in expected}, head)


def test_detr_loss_with_an_image_without_objects():
    head = _head()
    features, padding_mask, targets = _padded_batch()
    targets[1] = dict(labels=torch.zeros(0, dtype=torch.long), boxes=torch.zeros(0, 4))
    losses = head.loss(features, padding_mask, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses


def test_detr_learns_one_image():
    torch.manual_seed(0)
    head = _head(dropout=0.0, num_decoder_layers=2)
    features, padding_mask, targets = _padded_batch(seed=1)
    features = {k: v[1:] for k, v in features.items()}  # the padded image alone
    padding_mask, targets = padding_mask[1:], targets[:1]
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threading costs ~10x here on a busy machine
    try:
        for _ in range(60):
            losses = head.loss(features, padding_mask, targets)
            total = sum(v for k, v in losses.items() if 'loss' in k)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(total.item())
    finally:
        torch.set_num_threads(threads)
    assert history[-1] < 0.3 * history[0], history
    with torch.no_grad():
        pred = head.eval().predict(features, padding_mask)
    # the best-scoring query of each target class lands on its box
    probs = pred['logits'][0].softmax(-1)
    for label, box in zip(targets[0]['labels'], targets[0]['boxes']):
        query = probs[:, label].argmax()
        assert probs[query, label] > 0.5
        assert (pred['boxes'][0, query] - box).abs().max() < 0.05
