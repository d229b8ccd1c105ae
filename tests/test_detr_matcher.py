"""HungarianMatcher: optimal against brute force, costs against hand-computed values."""
import itertools
import math

import pytest
import torch

from densevit.models.heads.detr.matcher import HungarianMatcher, mask_ce_cost, mask_dice_cost
from densevit.registry import MODELS


def _xyxy(box):
    cx, cy, w, h = box
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _giou(a, b):
    """GIoU of two cxcywh boxes, from the definition."""
    ax1, ay1, ax2, ay2 = _xyxy(a)
    bx1, by1, bx2, by2 = _xyxy(b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def _reference_cost(logits, boxes, labels, tgt_boxes, class_cost, weights, alpha=0.25, gamma=2.0):
    """Cost matrix (Q, N) of one image written out element by element."""
    w_cls, w_bbox, w_giou = weights
    cost = torch.zeros(len(logits), len(labels), dtype=torch.float64)
    for q in range(len(logits)):
        for j in range(len(labels)):
            x = logits[q].double()
            if class_cost == 'focal':
                p = torch.sigmoid(x[labels[j]]).item()
                c = (alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
                     - (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8))
            else:
                c = -torch.softmax(x, 0)[labels[j]].item()
            l1 = sum(abs(u - v) for u, v in zip(boxes[q].tolist(), tgt_boxes[j].tolist()))
            cost[q, j] = (w_cls * c + w_bbox * l1
                          - w_giou * _giou(boxes[q].tolist(), tgt_boxes[j].tolist()))
    return cost


def _brute_force_min(cost):
    """Minimal total cost over all injective assignments of targets to queries."""
    num_queries, num_targets = cost.shape
    return min(sum(cost[q, j].item() for j, q in enumerate(perm))
               for perm in itertools.permutations(range(num_queries), num_targets))


def _random_boxes(n, gen):
    centers = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([centers, sizes], dim=1)


@pytest.mark.parametrize('class_cost', ['focal', 'ce'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_brute_force(class_cost, seed):
    gen = torch.Generator().manual_seed(seed)
    num_queries, num_classes = 5, 3
    width = num_classes + (class_cost == 'ce')
    counts = [0, 1, 2, 3, 4]  # one batch, every target count from 0 to 4
    logits = torch.randn(len(counts), num_queries, width, generator=gen) * 2
    boxes = _random_boxes(len(counts) * num_queries, gen).view(len(counts), num_queries, 4)
    targets = [dict(labels=torch.randint(0, num_classes, (n,), generator=gen),
                    boxes=_random_boxes(n, gen)) for n in counts]
    weights = (2.0, 5.0, 2.0)
    matcher = HungarianMatcher(class_cost=class_cost, cost_class=weights[0],
                               cost_bbox=weights[1], cost_giou=weights[2])
    matches = matcher(dict(logits=logits, boxes=boxes), targets)
    assert len(matches) == len(counts)
    for i, (t, (query_idx, target_idx)) in enumerate(zip(targets, matches)):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(target_idx) == len(t['labels'])
        assert sorted(target_idx.tolist()) == list(range(len(t['labels'])))
        assert len(set(query_idx.tolist())) == len(query_idx)
        cost = _reference_cost(logits[i], boxes[i], t['labels'], t['boxes'], class_cost, weights)
        total = sum(cost[q, j].item() for q, j in zip(query_idx.tolist(), target_idx.tolist()))
        assert total == pytest.approx(_brute_force_min(cost), abs=1e-5)
        # the batched cost equals the element-by-element one on the image's own block
        start = sum(counts[:i])
        block = matcher.cost_matrix(dict(logits=logits, boxes=boxes),
                                    targets)[i, :, start:start + counts[i]]
        torch.testing.assert_close(block.double(), cost, atol=1e-5, rtol=1e-5)


def test_box_costs_hand_computed():
    # pred (cx, cy, w, h) = (0.5, 0.5, 0.4, 0.4) -> xyxy (0.3, 0.3, 0.7, 0.7), area 0.16
    # tgt  (0.6, 0.6, 0.4, 0.2)                 -> xyxy (0.4, 0.5, 0.8, 0.7), area 0.08
    # L1 = 0.1 + 0.1 + 0.0 + 0.2 = 0.4
    # intersection (0.4..0.7) x (0.5..0.7) = 0.3 * 0.2 = 0.06, union = 0.16 + 0.08 - 0.06 = 0.18
    # IoU = 1/3; hull (0.3..0.8) x (0.3..0.7) = 0.2; GIoU = 1/3 - (0.2 - 0.18) / 0.2 = 0.23333...
    # second pred (0.2, 0.2, 0.2, 0.2) -> (0.1, 0.1, 0.3, 0.3), disjoint from the target:
    # L1 = 0.4 + 0.4 + 0.2 + 0.0 = 1.0; hull (0.1..0.8) x (0.1..0.7) = 0.42, union = 0.04 + 0.08
    # = 0.12; GIoU = 0 - (0.42 - 0.12) / 0.42 = -0.714285...
    outputs = dict(logits=torch.zeros(1, 2, 1),
                   boxes=torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.2, 0.2]]]))
    targets = [dict(labels=torch.tensor([0]), boxes=torch.tensor([[0.6, 0.6, 0.4, 0.2]]))]
    l1 = HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0).cost_matrix(outputs, targets)
    torch.testing.assert_close(l1[0, :, 0], torch.tensor([0.4, 1.0]))
    giou = HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=1).cost_matrix(outputs, targets)
    torch.testing.assert_close(giou[0, :, 0], -torch.tensor([0.7 / 3, -0.3 / 0.42]))
    both = HungarianMatcher(cost_class=0, cost_bbox=5, cost_giou=2).cost_matrix(outputs, targets)
    torch.testing.assert_close(both[0, :, 0], torch.tensor([5 * 0.4 - 2 * 0.7 / 3,
                                                            5 * 1.0 + 2 * 0.3 / 0.42]))


def test_class_costs_hand_computed():
    # focal cost = alpha (1-p)^2 (-ln p) - (1-alpha) p^2 (-ln(1-p)), alpha = 0.25:
    # logit 0     -> p = 1/2: 0.25 * 0.25 * ln 2 - 0.75 * 0.25 * ln 2 = -0.125 ln 2 = -0.0866434
    # logit ln 3  -> p = 3/4: 0.25 * 0.0625 * ln(4/3) - 0.75 * 0.5625 * ln 4
    #                       = 0.0044950 - 0.5848429 = -0.5803479
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    outputs = dict(logits=logits, boxes=torch.full((1, 1, 4), 0.5))
    targets = [dict(labels=torch.tensor([0, 1]), boxes=torch.full((2, 4), 0.5))]
    focal = HungarianMatcher(class_cost='focal', cost_class=1, cost_bbox=0, cost_giou=0)
    torch.testing.assert_close(focal.cost_matrix(outputs, targets)[0, 0],
                               torch.tensor([-0.0866434, -0.5803479]))
    # softmax cost = -prob: softmax(0, ln 3) = (1/4, 3/4)
    ce = HungarianMatcher(class_cost='ce', cost_class=1, cost_bbox=0, cost_giou=0)
    targets = [dict(labels=torch.tensor([0]), boxes=torch.full((1, 4), 0.5))]
    torch.testing.assert_close(ce.cost_matrix(outputs, targets)[0, 0], torch.tensor([-0.25]))


def test_empty_targets_give_empty_matches():
    matcher = HungarianMatcher()
    outputs = dict(logits=torch.randn(2, 4, 3), boxes=torch.rand(2, 4, 4))
    empty = dict(labels=torch.zeros(0, dtype=torch.long), boxes=torch.zeros(0, 4))
    one = dict(labels=torch.tensor([1]), boxes=torch.tensor([[.5, .5, .2, .2]]))
    for targets in ([empty, empty], [empty, one]):
        matches = matcher(outputs, targets)
        query_idx, target_idx = matches[0]
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert query_idx.numel() == target_idx.numel() == 0
    assert [len(m[0]) for m in matches] == [0, 1]


def test_non_finite_cost_names_the_image():
    boxes = torch.rand(2, 3, 4) * 0.5 + 0.1
    boxes[1, 2, 0] = float('nan')
    targets = [dict(labels=torch.tensor([0]), boxes=torch.tensor([[.5, .5, .2, .2]]))] * 2
    with pytest.raises(ValueError, match='image 1'):
        HungarianMatcher()(dict(logits=torch.zeros(2, 3, 2), boxes=boxes), targets)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='class_cost'):
        HungarianMatcher(class_cost='softmax')
    with pytest.raises(ValueError, match='all cost weights'):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    targets = [dict(labels=torch.tensor([3]), boxes=torch.tensor([[.5, .5, .2, .2]]))]
    with pytest.raises(ValueError, match='labels must be in'):
        HungarianMatcher()(dict(logits=torch.zeros(1, 2, 3), boxes=torch.rand(1, 2, 4)), targets)


def test_mask_cost_formulas():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    tgt = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    p = torch.sigmoid(logits[0])
    bce = -(torch.log(p) * tgt + torch.log(1 - p) * (1 - tgt)).mean(1)  # (2,)
    dice = 1 - (2 * (p * tgt).sum(1) + 1) / (p.sum() + tgt.sum(1) + 1)
    torch.testing.assert_close(mask_ce_cost(logits, tgt)[0], bce)
    torch.testing.assert_close(mask_dice_cost(logits, tgt)[0], dice)


def test_mask_costs_find_the_permutation():
    """With only mask costs, queries whose stride-4 logits reproduce the full-resolution target
    masks are matched to them, whatever the order."""
    torch.manual_seed(0)
    num_targets, size = 3, 32
    low = torch.rand(num_targets, size // 4, size // 4) > 0.5  # masks on the stride-4 grid
    full = low.repeat_interleave(4, 1).repeat_interleave(4, 2)  # the same masks at stride 1
    perm = torch.tensor([2, 0, 1])
    pred = torch.full((1, 4, size // 4, size // 4), -8.0)
    pred[0, :num_targets] = (low[perm].float() * 16 - 8)  # query q predicts target perm[q]
    targets = [dict(labels=torch.zeros(num_targets, dtype=torch.long),
                    boxes=torch.full((num_targets, 4), 0.5), masks=full)]
    matcher = MODELS.build(dict(type='HungarianMatcher', cost_class=0, cost_bbox=0, cost_giou=0,
                                cost_mask=5, cost_dice=5, num_points=500))
    query_idx, target_idx = matcher(dict(logits=torch.zeros(1, 4, 1),
                                         boxes=torch.full((1, 4, 4), 0.5), masks=pred), targets)[0]
    assert dict(zip(target_idx.tolist(), query_idx.tolist())) == {
        int(perm[q]): q for q in range(num_targets)}


def test_mask_costs_of_a_batch_match_each_image_alone():
    """The per-image mask costs give every image of a batch the matching it gets alone (same
    random points: the generator is reseeded before each call)."""
    gen = torch.Generator().manual_seed(3)
    matcher = HungarianMatcher(cost_class=1, cost_bbox=1, cost_giou=1, cost_mask=5, cost_dice=5,
                               num_points=200)
    outputs = dict(logits=torch.randn(2, 6, 3, generator=gen),
                   boxes=torch.rand(2, 6, 4, generator=gen) * 0.5 + 0.25,
                   masks=torch.randn(2, 6, 8, 8, generator=gen))
    targets = [dict(labels=torch.randint(0, 3, (n,), generator=gen),
                    boxes=torch.rand(n, 4, generator=gen) * 0.5 + 0.25,
                    masks=torch.rand(n, 32, 32, generator=gen) > 0.5) for n in (3, 4)]
    torch.manual_seed(0)
    batch = matcher(outputs, targets)
    for i in range(2):
        torch.manual_seed(0)
        alone = matcher({k: v[i:i + 1] for k, v in outputs.items()}, targets[i:i + 1])[0]
        assert torch.equal(batch[i][0], alone[0]) and torch.equal(batch[i][1], alone[1])
