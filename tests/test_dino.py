"""DINO head on a tiny configuration (hidden 32, 2 + 2 layers, 2 levels): P's shapes and keys (aux,
enc, dn with its meta), denoising queries that leave the matching queries untouched, the padding
mask, look-forward-twice gradients, official key names, readable finite losses with gradients
everywhere (with and without Mask DINO masks) and a short overfit on one batch."""
from __future__ import annotations

import pytest
import torch

from densevit.models.contract import FeatureSpec
from densevit.models.heads.detr import dino  # noqa: F401  (registers the head)
from densevit.models.heads.detr.denoising import DenoisingMeta
from densevit.registry import MODELS

DIM, NUM_CLASSES, NUM_QUERIES, NUM_LAYERS, NUM_DN = 32, 3, 10, 2, 6
SHAPES = {'s4': FeatureSpec(16, 4), 's8': FeatureSpec(DIM, 8), 's16': FeatureSpec(DIM, 16)}
IMAGE = (64, 64)
VALID = [(64, 64), (48, 32)]  # (h, w) of each image's unpadded region: multiples of 16
CRITERION = dict(type='SetCriterion', weights=dict(cls=1.0, bbox=5.0, giou=2.0),
                 num_points=64,
                 matcher=dict(type='HungarianMatcher', cost_class=2.0, cost_bbox=5.0,
                              cost_giou=2.0))


def build_head(**kwargs):
    cfg = dict(type='DINO', input_shapes=SHAPES, in_features=('s8', 's16'),
               num_classes=NUM_CLASSES, criterion=CRITERION, hidden_dim=DIM, num_heads=2,
               num_encoder_layers=NUM_LAYERS, num_decoder_layers=NUM_LAYERS, ffn_dim=64,
               num_queries=NUM_QUERIES, enc_points=2, dec_points=2, num_dn=NUM_DN, mask_dim=16)
    cfg.update(kwargs)
    if cfg.get('with_masks'):
        cfg['criterion'] = dict(CRITERION, weights=dict(cls=1.0, bbox=5.0, giou=2.0, mask=5.0,
                                                         dice=5.0),
                                matcher=dict(CRITERION['matcher'], cost_mask=5.0,
                                             cost_dice=5.0, num_points=64))
    return MODELS.build(cfg)


def make_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = {name: torch.randn(len(VALID), s.channels, IMAGE[0] // s.stride,
                                  IMAGE[1] // s.stride, generator=gen)
                for name, s in SHAPES.items()}
    padding_mask = torch.ones(len(VALID), *IMAGE, dtype=torch.bool)
    for i, (h, w) in enumerate(VALID):
        padding_mask[i, :h, :w] = False
    boxes = [torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.4, 0.2]]),
             torch.tensor([[0.5, 0.5, 0.6, 0.5]])]
    targets = []
    for (h, w), box, labels in zip(VALID, boxes, [torch.tensor([0, 2]), torch.tensor([1])]):
        masks = torch.zeros(len(box), *IMAGE, dtype=torch.bool)
        for k, (cx, cy, bw, bh) in enumerate(box.tolist()):
            masks[k, int((cy - bh / 2) * h):int((cy + bh / 2) * h),
                  int((cx - bw / 2) * w):int((cx + bw / 2) * w)] = True
        targets.append(dict(labels=labels, boxes=box, masks=masks))
    return features, padding_mask, targets


def test_outputs_shapes_and_keys():
    head = build_head().eval()
    features, padding_mask, targets = make_batch()
    out = head(features, padding_mask, targets)
    assert out['logits'].shape == (2, NUM_QUERIES, NUM_CLASSES)
    assert out['boxes'].shape == (2, NUM_QUERIES, 4)
    assert len(out['aux']) == NUM_LAYERS - 1
    assert out['enc']['logits'].shape == (2, NUM_QUERIES, NUM_CLASSES)
    assert out['enc']['boxes'].shape == (2, NUM_QUERIES, 4)
    meta = out['dn']['meta']
    assert isinstance(meta, DenoisingMeta)
    # at most 2 targets per image: group size 4, NUM_DN // 2 = 3 groups
    assert (meta.group_size, meta.num_groups) == (4, 3)
    assert out['dn']['logits'].shape == (2, meta.num_dn_queries, NUM_CLASSES)
    assert out['dn']['boxes'].shape == (2, meta.num_dn_queries, 4)
    assert len(out['dn']['aux']) == NUM_LAYERS - 1
    assert out['dn']['aux'][0]['boxes'].shape == (2, meta.num_dn_queries, 4)
    assert 'masks' not in out and 'dn' not in head(features, padding_mask)
    assert 'dn' not in build_head(num_dn=0)(features, padding_mask, targets)
    pred = head.predict(features, padding_mask)
    assert set(pred) == {'logits', 'boxes'}


def test_denoising_queries_leave_the_matching_queries_untouched():
    head = build_head().eval()
    features, padding_mask, targets = make_batch()
    with torch.no_grad():
        plain = head(features, padding_mask)
        with_dn = head(features, padding_mask, targets)
    for key in ('logits', 'boxes'):
        assert torch.allclose(plain[key], with_dn[key], atol=1e-5)
        assert torch.allclose(plain['aux'][0][key], with_dn['aux'][0][key], atol=1e-5)
        assert torch.allclose(plain['enc'][key], with_dn['enc'][key], atol=1e-5)
    # the positive denoising queries start near their targets, so they already land close
    dn_boxes = with_dn['dn']['boxes'][1, :1]  # image 1, group 0, positive of target 0
    assert (dn_boxes - targets[1]['boxes']).abs().max() < 0.5


def test_features_under_padding_change_nothing():
    head = build_head().eval()
    features, padding_mask, _ = make_batch()
    perturbed = dict(features)
    for name in head.in_features:
        feat = features[name]
        level_mask = torch.nn.functional.interpolate(padding_mask[:, None].float(),
                                                     size=feat.shape[-2:])[:, 0].bool()
        perturbed[name] = torch.where(level_mask[:, None], feat + 10 * torch.randn_like(feat),
                                      feat)
    with torch.no_grad():
        ref, out = head(features, padding_mask), head(perturbed, padding_mask)
    for key in ('logits', 'boxes'):
        assert torch.allclose(ref[key], out[key], atol=1e-5)
        assert torch.allclose(ref['enc'][key], out['enc'][key], atol=1e-5)


def test_look_forward_twice_gradients():
    head = build_head(share_pred_layers=False).eval()
    features, padding_mask, _ = make_batch()
    out = head(features, padding_mask)
    # the last layer's boxes reach the previous layer's box head through its un-detached box
    grad = torch.autograd.grad(out['boxes'].sum(), head.bbox_embed[0].layers[-1].weight,
                               allow_unused=True)[0]
    assert grad is not None and grad.abs().sum() > 0
    # but the reference the last layer attends with is detached: its class logits do not
    grad = torch.autograd.grad(out['logits'].sum(), head.bbox_embed[0].layers[-1].weight,
                               allow_unused=True)[0]
    assert grad is None or grad.abs().sum() == 0


def test_official_names_and_shared_heads():
    head = build_head()
    assert MODELS.build(dict(type='DINO', input_shapes=SHAPES, in_features=('s8', 's16'),
                             num_classes=NUM_CLASSES, hidden_dim=DIM, num_heads=2,
                             num_queries=NUM_QUERIES)).criterion.weights['cls'] == 1.0
    keys = set(head.state_dict())
    assert {'label_enc.weight', 'transformer.level_embed', 'transformer.tgt_embed.weight',
            'transformer.enc_output.weight', 'transformer.enc_output_norm.weight',
            'transformer.enc_out_class_embed.bias', 'transformer.enc_out_bbox_embed.layers.2.bias',
            'transformer.decoder.norm.weight', 'transformer.decoder.ref_point_head.layers.1.weight',
            'transformer.decoder.layers.1.self_attn.in_proj_weight',
            'transformer.decoder.layers.1.cross_attn.sampling_offsets.bias',
            'transformer.encoder.layers.0.self_attn.attention_weights.weight',
            'class_embed.1.weight', 'bbox_embed.1.layers.0.weight'} <= keys
    assert head.label_enc.num_embeddings == NUM_CLASSES + 1
    assert head.class_embed[0] is head.class_embed[1]
    assert head.transformer.enc_out_class_embed is not head.class_embed[0]
    assert head.transformer.tgt_embed.num_embeddings == NUM_QUERIES


@pytest.mark.parametrize('with_masks', [False, True])
def test_loss_keys_finite_and_gradients_everywhere(with_masks):
    head = build_head(with_masks=with_masks).train()
    features, padding_mask, targets = make_batch()
    out = head(features, padding_mask, targets)
    if with_masks:
        size = (IMAGE[0] // 4, IMAGE[1] // 4)
        assert out['masks'].shape == (2, NUM_QUERIES, *size)
        for part in (out['aux'][0], out['enc'], out['dn'], out['dn']['aux'][0]):
            assert part['masks'].shape[-2:] == size
        assert set(head.predict(features, padding_mask)) == {'logits', 'boxes', 'masks'}
    losses = head.loss(features, padding_mask, targets)
    base = ['loss_cls', 'loss_bbox', 'loss_giou'] + (['loss_mask', 'loss_dice']
                                                     if with_masks else [])
    expected = {f'{prefix}{name}' for prefix in ('', 'd0.', 'enc.', 'dn.', 'dn.d0.')
                for name in base}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    for part in ('transformer.encoder', 'transformer.decoder', 'transformer.tgt_embed',
                 'transformer.enc_out_class_embed', 'transformer.enc_output', 'label_enc',
                 'class_embed', 'bbox_embed') + (('mask_branch',) if with_masks else ()):
        norm = sum(p.grad.abs().sum() for n, p in head.named_parameters() if n.startswith(part))
        assert norm > 0, part


def test_no_targets_in_the_batch_still_trains():
    head = build_head().train()
    features, padding_mask, targets = make_batch()
    empty = [dict(labels=t['labels'][:0], boxes=t['boxes'][:0]) for t in targets]
    out = head(features, padding_mask, empty)
    assert 'dn' not in out
    losses = head.loss(features, padding_mask, empty)
    sum(losses.values()).backward()
    assert head.label_enc.weight.grad is not None


def test_a_few_steps_drive_the_loss_down():
    torch.manual_seed(0)
    head = build_head().train()
    features, padding_mask, targets = make_batch()
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    totals = []
    for _ in range(30):
        total = sum(head.loss(features, padding_mask, targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-3:]) / 3 < 0.6 * totals[0], totals
