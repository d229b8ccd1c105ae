"""SetCriterion: loss values against independent computations, loss names, degenerate and empty
cases, and the number of boxes averaged over processes."""
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import densevit.models.heads.detr.criterion as criterion_module
from densevit.models.heads.detr.criterion import SetCriterion, average_num_boxes
from densevit.models.heads.detr.denoising import make_denoising_queries
from densevit.models.heads.detr.point_sampling import point_sample, uncertain_point_coords


class FixedMatcher(nn.Module):
    """Returns the same matching whatever the predictions (isolates the losses from matching)."""

    def __init__(self, indices):
        super().__init__()
        self.indices = [(torch.tensor(q), torch.tensor(t)) for q, t in indices]
        self.calls = []

    def forward(self, outputs, targets):
        self.calls.append([t['labels'].clone() for t in targets])
        return self.indices


def _giou(a, b):
    """GIoU of two cxcywh boxes (lists), from the definition."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def _focal(x, t, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss of one logit x against a 0/1 target t, from the formula."""
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return alpha_t * (1 - p_t) ** gamma * ce


# a hand-built batch: image 0 has two targets, image 1 one; queries 2, 0 of image 0 and query 1
# of image 1 are matched
TARGETS = [dict(labels=torch.tensor([1, 0]),
                boxes=torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.2, 0.3, 0.1, 0.2]])),
           dict(labels=torch.tensor([1]), boxes=torch.tensor([[0.7, 0.6, 0.3, 0.5]]))]
INDICES = [([2, 0], [0, 1]), ([1], [0])]
PRED_BOXES = torch.tensor([[[0.25, 0.3, 0.1, 0.25], [0.9, 0.9, 0.1, 0.1], [0.55, 0.45, 0.3, 0.5]],
                           [[0.1, 0.1, 0.1, 0.1], [0.6, 0.6, 0.2, 0.4], [0.4, 0.4, 0.2, 0.2]]])
WEIGHTS = dict(cls=2.0, bbox=5.0, giou=3.0)


def _expected_box_losses(num_boxes):
    l1 = giou = 0.0
    for i, (queries, tgts) in enumerate(INDICES):
        for q, j in zip(queries, tgts):
            pred, tgt = PRED_BOXES[i, q].tolist(), TARGETS[i]['boxes'][j].tolist()
            l1 += sum(abs(u - v) for u, v in zip(pred, tgt))
            giou += 1 - _giou(pred, tgt)
    return l1 / num_boxes, giou / num_boxes


def test_focal_and_box_losses_equal_hand_computation():
    logits = torch.tensor([[[0.3, -1.2], [2.0, 0.1], [-0.5, 1.5]],
                           [[-2.0, -0.7], [0.8, 1.1], [0.0, -3.0]]])
    criterion = SetCriterion(num_classes=2, matcher=FixedMatcher(INDICES), class_loss='focal',
                             weights=WEIGHTS)
    losses = criterion(dict(logits=logits, boxes=PRED_BOXES), TARGETS)
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_giou'}

    matched = {(i, q): TARGETS[i]['labels'][j].item()
               for i, (queries, tgts) in enumerate(INDICES) for q, j in zip(queries, tgts)}
    focal = sum(_focal(logits[i, q, c].item(), float(matched.get((i, q)) == c))
                for i in range(2) for q in range(3) for c in range(2))
    l1, giou = _expected_box_losses(num_boxes=3)
    assert losses['loss_cls'].item() == pytest.approx(2.0 * focal / 3, rel=1e-5)
    assert losses['loss_bbox'].item() == pytest.approx(5.0 * l1, rel=1e-5)
    assert losses['loss_giou'].item() == pytest.approx(3.0 * giou, rel=1e-5)


def test_cross_entropy_with_no_object_weight():
    logits = torch.tensor([[[0.3, -1.2, 0.4], [2.0, 0.1, -0.3], [-0.5, 1.5, 0.0]],
                           [[-2.0, -0.7, 1.0], [0.8, 1.1, 0.2], [0.0, -3.0, 0.5]]])
    criterion = SetCriterion(num_classes=2, matcher=FixedMatcher(INDICES), class_loss='ce',
                             weights=WEIGHTS, no_object_weight=0.1)
    losses = criterion(dict(logits=logits, boxes=PRED_BOXES), TARGETS)
    matched = {(i, q): TARGETS[i]['labels'][j].item()
               for i, (queries, tgts) in enumerate(INDICES) for q, j in zip(queries, tgts)}
    total = norm = 0.0
    for i in range(2):
        for q in range(3):
            cls = matched.get((i, q), 2)  # 2 = no-object
            weight = 0.1 if cls == 2 else 1.0
            row = logits[i, q].tolist()
            log_prob = row[cls] - math.log(sum(math.exp(v) for v in row))
            total += -weight * log_prob
            norm += weight
    assert losses['loss_cls'].item() == pytest.approx(2.0 * total / norm, rel=1e-5)
    with pytest.raises(ValueError, match='width 3'):
        criterion(dict(logits=logits[..., :2], boxes=PRED_BOXES), TARGETS)


def test_point_sample_aligns_stride4_and_full_resolution():
    """At the centres of the stride-4 cells, a stride-4 map and its 4x nearest upsampling agree:
    both resolutions share one normalised frame."""
    low = torch.randn(3, 1, 5, 7)
    full = low.repeat_interleave(4, 2).repeat_interleave(4, 3)
    ys, xs = torch.meshgrid((torch.arange(5) + 0.5) / 5, (torch.arange(7) + 0.5) / 7,
                            indexing='ij')
    coords = torch.stack([xs, ys], -1).view(1, 35, 2).expand(3, -1, -1)  # (x, y) order
    torch.testing.assert_close(point_sample(low, coords), low.flatten(2))
    torch.testing.assert_close(point_sample(full, coords), low.flatten(2))


def test_uncertain_points_prefer_uncertain_logits():
    torch.manual_seed(0)
    logits = torch.full((2, 1, 16, 16), 10.0)
    logits[..., :8] = 0.0  # the left half is undecided
    coords = uncertain_point_coords(logits, num_points=40, oversample_ratio=3,
                                    importance_sample_ratio=0.5)
    assert coords.shape == (2, 40, 2)
    assert (coords[:, :20, 0] < 0.5).all()  # every importance point lies in the left half


def test_mask_losses_equal_hand_computation(monkeypatch):
    torch.manual_seed(0)
    h, w = 6, 5  # stride-4 grid of a 24 x 20 padded batch
    pred_masks = torch.randn(2, 3, h, w) * 3
    low = torch.rand(3, h, w) > 0.5
    full = low.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (3, 24, 20)
    targets = [dict(TARGETS[0], masks=full[:2]), dict(TARGETS[1], masks=full[2:])]
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                            indexing='ij')
    centres = torch.stack([xs, ys], -1).view(1, h * w, 2)

    def centre_points(logits, **kwargs):  # sample every stride-4 cell centre once
        return centres.expand(len(logits), -1, -1)

    monkeypatch.setattr(criterion_module, 'uncertain_point_coords', centre_points)
    criterion = SetCriterion(num_classes=2, matcher=FixedMatcher(INDICES),
                             weights=dict(mask=4.0, dice=3.0))
    losses = criterion(dict(logits=torch.zeros(2, 3, 2), boxes=PRED_BOXES, masks=pred_masks),
                       targets)
    bce = dice = 0.0
    for i, (queries, tgts) in enumerate(INDICES):
        for q, j in zip(queries, tgts):
            x = pred_masks[i, q].flatten().double()
            t = targets[i]['masks'][j, ::4, ::4].flatten().double()  # the low-res mask
            p = torch.sigmoid(x)
            bce += (-(t * torch.log(p) + (1 - t) * torch.log(1 - p))).mean().item()
            dice += 1 - ((2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)).item()
    assert losses['loss_mask'].item() == pytest.approx(4.0 * bce / 3, rel=1e-5)
    assert losses['loss_dice'].item() == pytest.approx(3.0 * dice / 3, rel=1e-5)


def _full_outputs(batch_size=2, num_queries=6, num_classes=3, layers=3, with_masks=True,
                  dn_meta=None):
    def layer(num, requires_grad=True):
        out = dict(logits=torch.randn(batch_size, num, num_classes),
                   boxes=torch.rand(batch_size, num, 4) * 0.3 + 0.2)
        if with_masks:
            out['masks'] = torch.randn(batch_size, num, 8, 8)
        for v in out.values():
            v.requires_grad_(requires_grad)
        return out

    outputs = layer(num_queries)
    outputs['aux'] = [layer(num_queries) for _ in range(layers - 1)]
    outputs['enc'] = layer(num_queries)
    if dn_meta is not None:
        outputs['dn'] = dict(layer(dn_meta.num_dn_queries), meta=dn_meta,
                             aux=[layer(dn_meta.num_dn_queries) for _ in range(layers - 1)])
    return outputs


def _random_targets(counts, num_classes=3, size=32):
    return [dict(labels=torch.randint(0, num_classes, (n,)),
                 boxes=torch.rand(n, 4) * 0.3 + 0.2,
                 masks=torch.rand(n, size, size) > 0.5) for n in counts]


def test_aux_enc_dn_loss_names():
    torch.manual_seed(0)
    targets = _random_targets([2, 1])
    _, _, meta = make_denoising_queries(targets, label_embedding=nn.Embedding(3, 4),
                                        num_classes=3, num_dn=4)
    criterion = SetCriterion(num_classes=3, num_points=50,
                             matcher=dict(type='HungarianMatcher', cost_mask=5, cost_dice=5,
                                          num_points=50))
    losses = criterion(_full_outputs(dn_meta=meta), targets)
    names = ['loss_cls', 'loss_bbox', 'loss_giou', 'loss_mask', 'loss_dice']
    prefixes = ['', 'd0.', 'd1.', 'enc.', 'dn.', 'dn.d0.', 'dn.d1.']
    assert set(losses) == {p + n for p in prefixes for n in names}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_denoising_negatives_and_padding_are_no_object():
    torch.manual_seed(0)
    targets = _random_targets([2, 1])
    _, _, meta = make_denoising_queries(targets, label_embedding=nn.Embedding(3, 4),
                                        num_classes=3, num_dn=4)  # 2 groups of 4 queries
    outputs = _full_outputs(dn_meta=meta, with_masks=False, layers=1)
    criterion = SetCriterion(num_classes=3, matcher=dict(type='HungarianMatcher'))
    losses = criterion(outputs, targets)
    dn = outputs['dn']
    # independent: query g*4 + t of image i is target t; everything else learns all-zero
    onehot = torch.zeros(2, 8, 3)
    l1 = 0.0
    for i, t in enumerate(targets):
        for g in range(2):
            for j in range(len(t['labels'])):
                onehot[i, g * 4 + j, t['labels'][j]] = 1
                l1 += (dn['boxes'][i, g * 4 + j] - t['boxes'][j]).abs().sum().item()
    focal = sum(_focal(x, y) for x, y in zip(dn['logits'].flatten().tolist(),
                                             onehot.flatten().tolist()))
    num_dn_boxes = 3 * meta.num_groups
    assert losses['dn.loss_cls'].item() == pytest.approx(focal / num_dn_boxes, rel=1e-5)
    assert losses['dn.loss_bbox'].item() == pytest.approx(5.0 * l1 / num_dn_boxes, rel=1e-5)


def test_enc_class_agnostic_uses_label_zero():
    logits = torch.randn(2, 3, 2)
    matcher = FixedMatcher(INDICES)
    criterion = SetCriterion(num_classes=2, matcher=matcher, enc_class_agnostic=True)
    enc = dict(logits=logits.clone(), boxes=PRED_BOXES.clone())
    losses = criterion(dict(logits=logits, boxes=PRED_BOXES, enc=enc), TARGETS)
    assert [labels.tolist() for labels in matcher.calls[-1]] == [[0, 0], [0]]
    zero_targets = [dict(t, labels=torch.zeros_like(t['labels'])) for t in TARGETS]
    reference = SetCriterion(num_classes=2, matcher=FixedMatcher(INDICES))(
        dict(logits=logits, boxes=PRED_BOXES), zero_targets)
    torch.testing.assert_close(losses['enc.loss_cls'], reference['loss_cls'])
    # DINO keeps the real labels for its encoder proposals
    criterion = SetCriterion(num_classes=2, matcher=matcher)
    criterion(dict(logits=logits, boxes=PRED_BOXES, enc=enc), TARGETS)
    assert [labels.tolist() for labels in matcher.calls[-1]] == [[1, 0], [1]]


def test_degenerate_boxes_give_finite_losses_and_gradients():
    torch.manual_seed(0)
    boxes = torch.rand(2, 5, 4) * 0.5 + 0.2
    boxes[:, :, 2] = 0.0  # zero width everywhere
    boxes[0, :2, 3] = 0.0  # and zero height for some
    boxes[1, 0] = torch.tensor([0.5, 0.5, 0.0, 0.2])  # centred on a target, zero width
    boxes.requires_grad_(True)
    logits = torch.randn(2, 5, 3, requires_grad=True)
    targets = [dict(labels=torch.tensor([0, 2]), boxes=torch.tensor([[.4, .4, .2, .2],
                                                                     [.6, .5, .3, .1]])),
               dict(labels=torch.tensor([1]), boxes=torch.tensor([[.5, .5, .2, .2]]))]
    criterion = SetCriterion(num_classes=3, matcher=dict(type='HungarianMatcher'))
    losses = criterion(dict(logits=logits, boxes=boxes, aux=[dict(logits=logits, boxes=boxes)]),
                       targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert torch.isfinite(boxes.grad).all() and boxes.grad.abs().sum() > 0


@pytest.mark.parametrize('class_loss', ['focal', 'ce'])
def test_images_without_targets_train(class_loss):
    torch.manual_seed(0)
    outputs = _full_outputs(num_classes=3 + (class_loss == 'ce'), layers=2)
    empty = [dict(labels=torch.zeros(0, dtype=torch.long), boxes=torch.zeros(0, 4),
                  masks=torch.zeros(0, 32, 32, dtype=torch.bool))] * 2
    criterion = SetCriterion(num_classes=3, class_loss=class_loss,
                             matcher=dict(type='HungarianMatcher', class_cost=class_loss))
    losses = criterion(outputs, empty)
    for name in ('loss_bbox', 'loss_giou', 'loss_mask', 'loss_dice'):
        assert losses[name].item() == 0 and losses[name].requires_grad
    assert losses['loss_cls'].item() > 0
    sum(losses.values()).backward()
    for out in (outputs, outputs['aux'][0], outputs['enc']):
        assert out['boxes'].grad is not None and (out['boxes'].grad == 0).all()
        assert out['masks'].grad is not None
        assert out['logits'].grad.abs().sum() > 0
    # one image with targets, one without: both train
    mixed = [empty[0], _random_targets([2])[0]]
    losses = criterion(_full_outputs(num_classes=3 + (class_loss == 'ce'), layers=2), mixed)
    assert losses['loss_bbox'].item() > 0


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    """With torch.distributed initialised, the count is all-reduced and divided by the world
    size: here the other process holds 7 boxes, so num_boxes = (3 + 7) / 2 = 5."""
    reduced = []

    def fake_all_reduce(tensor):
        reduced.append(tensor.clone())
        tensor += 7

    monkeypatch.setattr(criterion_module.dist, 'is_available', lambda: True)
    monkeypatch.setattr(criterion_module.dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(criterion_module.dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(criterion_module.dist, 'all_reduce', fake_all_reduce)
    criterion = SetCriterion(num_classes=2, matcher=FixedMatcher(INDICES), weights=WEIGHTS)
    losses = criterion(dict(logits=torch.zeros(2, 3, 2), boxes=PRED_BOXES), TARGETS)
    assert reduced[0].item() == 3
    l1, _ = _expected_box_losses(num_boxes=5)
    assert losses['loss_bbox'].item() == pytest.approx(5.0 * l1, rel=1e-5)
    # no boxes anywhere: clamped at 1
    monkeypatch.setattr(criterion_module.dist, 'all_reduce', lambda tensor: None)
    assert average_num_boxes([dict(labels=torch.zeros(0))], torch.device('cpu')) == 1.0


def _gloo_worker(rank, init_file):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                                         world_size=2)
    try:
        targets = [dict(labels=torch.zeros(1 + 3 * rank, dtype=torch.long))]  # 1 and 4 boxes
        assert average_num_boxes(targets, torch.device('cpu')) == 2.5
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_num_boxes_two_processes_gloo(tmp_path):
    """The same with a real all_reduce: two CPU processes over gloo with 1 and 4 boxes."""
    mp.spawn(_gloo_worker, args=(os.fspath(tmp_path / 'init'),), nprocs=2, join=True)
