"""Deformable DETR head on a tiny configuration (hidden 32, 2 + 2 layers, 2 levels): P's shapes and
keys for every single-/two-stage and refinement combination, the published initialisation and
official key names, the padding mask (features under padding change nothing), input checks,
readable finite losses with gradients everywhere, and a short overfit on one batch."""
from __future__ import annotations

import math

import pytest
import torch

from densevit.models.contract import FeatureSpec
from densevit.models.heads.detr import deformable_detr  # noqa: F401  (registers the head)
from densevit.models.heads.detr.deformable_transformer import (encoder_output_proposals,
                                                               encoder_reference_points,
                                                               inverse_sigmoid, valid_ratio)
from densevit.registry import MODELS

DIM, NUM_CLASSES, NUM_QUERIES, NUM_LAYERS = 32, 3, 10, 2
SHAPES = {'s8': FeatureSpec(DIM, 8), 's16': FeatureSpec(DIM, 16)}
IMAGE = (64, 64)
VALID = [(64, 64), (48, 32)]  # (h, w) of each image's unpadded region: multiples of 16
CRITERION = dict(type='SetCriterion', weights=dict(cls=2.0, bbox=5.0, giou=2.0),
                 matcher=dict(type='HungarianMatcher', cost_class=2.0, cost_bbox=5.0,
                              cost_giou=2.0))
COMBOS = [(False, False), (True, False), (False, True), (True, True)]


def build_head(with_box_refine: bool = False, two_stage: bool = False, **kwargs):
    criterion = dict(CRITERION, enc_class_agnostic=two_stage)
    cfg = dict(type='DeformableDETR', input_shapes=SHAPES, in_features=('s8', 's16'),
               num_classes=NUM_CLASSES, criterion=criterion, hidden_dim=DIM, num_heads=2,
               num_encoder_layers=NUM_LAYERS, num_decoder_layers=NUM_LAYERS, ffn_dim=64,
               dropout=0.0, num_queries=NUM_QUERIES, enc_points=2, dec_points=2,
               with_box_refine=with_box_refine, two_stage=two_stage)
    cfg.update(kwargs)
    if cfg['criterion'] is None:  # the head's default, the published recipe
        del cfg['criterion']
    return MODELS.build(cfg)


def make_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = {name: torch.randn(len(VALID), DIM, IMAGE[0] // s.stride, IMAGE[1] // s.stride,
                                  generator=gen) for name, s in SHAPES.items()}
    padding_mask = torch.ones(len(VALID), *IMAGE, dtype=torch.bool)
    for i, (h, w) in enumerate(VALID):
        padding_mask[i, :h, :w] = False
    targets = [dict(labels=torch.tensor([0, 2]),
                    boxes=torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.4, 0.2]])),
               dict(labels=torch.tensor([1]), boxes=torch.tensor([[0.5, 0.5, 0.6, 0.5]]))]
    return features, padding_mask, targets


def test_reference_points_and_proposals_follow_the_valid_region():
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :4] = False  # valid: 2 rows, 4 columns
    ratios = valid_ratio(mask)
    assert ratios.tolist() == [[1.0, 0.5]]
    shapes = torch.tensor([[4, 4]])
    ref = encoder_reference_points(shapes, ratios[:, None])  # (1, 16, 1, 2)
    # the centre of token (row 1, col 0) is (0.5, 1.5) of a 4 x 2 valid region, then scaled by
    # the level's own ratio back to the padded frame
    assert torch.allclose(ref[0, 4, 0], torch.tensor([0.5 / 4, 1.5 / 2 * 0.5]))
    memory = torch.randn(1, 16, 8)
    out_memory, proposals = encoder_output_proposals(memory, mask.flatten(1), shapes)
    assert torch.isinf(proposals[0, 8:]).all() and (out_memory[0, 8:] == 0).all()
    assert torch.allclose(proposals[0, 4].sigmoid(), torch.tensor([0.5 / 4, 1.5 / 2, 0.05, 0.05]))
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()


@pytest.mark.parametrize('with_box_refine, two_stage', COMBOS)
def test_outputs_shapes_and_keys(with_box_refine, two_stage):
    head = build_head(with_box_refine, two_stage).eval()
    features, padding_mask, targets = make_batch()
    out = head(features, padding_mask, targets)
    assert out['logits'].shape == (2, NUM_QUERIES, NUM_CLASSES)
    assert out['boxes'].shape == (2, NUM_QUERIES, 4)
    assert ((out['boxes'] >= 0) & (out['boxes'] <= 1)).all()
    assert len(out['aux']) == NUM_LAYERS - 1
    assert out['aux'][0]['boxes'].shape == (2, NUM_QUERIES, 4)
    num_tokens = sum((IMAGE[0] // s.stride) * (IMAGE[1] // s.stride) for s in SHAPES.values())
    if two_stage:
        assert out['enc']['logits'].shape == (2, num_tokens, NUM_CLASSES)
        assert out['enc']['boxes'].shape == (2, num_tokens, 4)
    else:
        assert 'enc' not in out
    pred = head.predict(features, padding_mask)
    assert set(pred) == {'logits', 'boxes'}
    assert torch.equal(pred['boxes'], out['boxes'])


@pytest.mark.parametrize('with_box_refine, two_stage', COMBOS)
def test_published_initialisation_and_official_names(with_box_refine, two_stage):
    head = build_head(with_box_refine, two_stage, criterion=None)
    assert head.criterion.enc_class_agnostic == two_stage
    assert head.criterion.weights['cls'] == 2.0
    num_pred = NUM_LAYERS + two_stage
    assert len(head.class_embed) == len(head.bbox_embed) == num_pred
    prior = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(head.class_embed[0].bias, torch.full((NUM_CLASSES,), prior))
    size_bias = [embed.layers[-1].bias[2:].tolist() for embed in head.bbox_embed]
    if two_stage:
        assert all(b == [0.0, 0.0] for b in size_bias)
    else:
        assert size_bias[0] == [-2.0, -2.0]
        assert size_bias[-1] == ([0.0, 0.0] if with_box_refine else [-2.0, -2.0])
    assert (head.class_embed[0] is head.class_embed[1]) != with_box_refine
    keys = set(head.state_dict())
    expected = {'transformer.level_embed',
                'transformer.encoder.layers.1.self_attn.sampling_offsets.weight',
                'transformer.encoder.layers.0.linear2.bias',
                'transformer.decoder.layers.1.cross_attn.value_proj.weight',
                'transformer.decoder.layers.0.self_attn.in_proj_weight',
                'transformer.decoder.layers.0.norm3.weight',
                f'class_embed.{num_pred - 1}.bias', f'bbox_embed.{num_pred - 1}.layers.2.weight'}
    if two_stage:
        expected |= {'transformer.enc_output.weight', 'transformer.enc_output_norm.bias',
                     'transformer.pos_trans.weight', 'transformer.pos_trans_norm.weight'}
        assert 'query_embed.weight' not in keys
    else:
        expected |= {'query_embed.weight', 'transformer.reference_points.weight'}
    assert expected <= keys


@pytest.mark.parametrize('two_stage', [False, True])
def test_features_under_padding_change_nothing(two_stage):
    head = build_head(True, two_stage).eval()
    features, padding_mask, _ = make_batch()
    perturbed = {}
    for name, feat in features.items():
        level_mask = torch.nn.functional.interpolate(padding_mask[:, None].float(),
                                                     size=feat.shape[-2:])[:, 0].bool()
        assert level_mask[1].any() and not level_mask[0].any()
        noise = 10 * torch.randn_like(feat)
        perturbed[name] = torch.where(level_mask[:, None], feat + noise, feat)
    with torch.no_grad():
        ref, out = head(features, padding_mask), head(perturbed, padding_mask)
    for key in ('logits', 'boxes'):
        assert torch.allclose(ref[key], out[key], atol=1e-5)
    # and the mask itself matters: unpadding image 1 changes its predictions
    with torch.no_grad():
        unpadded = head(features, torch.zeros_like(padding_mask))
    assert not torch.allclose(ref['logits'][1], unpadded['logits'][1], atol=1e-4)
    assert torch.allclose(ref['logits'][0], unpadded['logits'][0], atol=1e-5)


def test_input_checks():
    with pytest.raises(ValueError, match='ChannelMapper'):
        MODELS.build(dict(type='DeformableDETR', input_shapes={'s8': FeatureSpec(16, 8)},
                          in_features=('s8',), num_classes=3, criterion=CRITERION,
                          hidden_dim=DIM, num_heads=2))
    with pytest.raises(ValueError, match='fine to coarse'):
        build_head(in_features=('s16', 's8'))
    with pytest.raises(ValueError, match='num_classes'):
        build_head(criterion=dict(CRITERION, num_classes=7))
    with pytest.raises(KeyError, match='s32'):
        build_head(in_features=('s8', 's32'))


@pytest.mark.parametrize('with_box_refine, two_stage', COMBOS)
def test_loss_keys_finite_and_gradients_everywhere(with_box_refine, two_stage):
    head = build_head(with_box_refine, two_stage).train()
    features, padding_mask, targets = make_batch()
    losses = head.loss(features, padding_mask, targets)
    expected = {'loss_cls', 'loss_bbox', 'loss_giou', 'd0.loss_cls', 'd0.loss_bbox',
                'd0.loss_giou'}
    if two_stage:
        expected |= {'enc.loss_cls', 'enc.loss_bbox', 'enc.loss_giou'}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    # (level_embed and the query positions get zero gradients at the published initialisation:
    # the deformable attentions' offset and weight projections start at zero)
    for part in ('transformer.encoder', 'transformer.decoder', 'class_embed', 'bbox_embed'):
        norm = sum(p.grad.abs().sum() for n, p in head.named_parameters() if n.startswith(part))
        assert norm > 0, part


def test_a_few_steps_drive_the_loss_down():
    torch.manual_seed(0)
    head = build_head(True, True).train()
    features, padding_mask, targets = make_batch()
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    totals = []
    for _ in range(20):
        total = sum(head.loss(features, padding_mask, targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.5 * totals[0], totals
