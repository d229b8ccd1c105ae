"""DINO contrastive denoising: query layout, noise bounds, attention mask, match indices."""
import pytest
import torch
from torch import nn

from densevit.models.heads.detr.denoising import (DenoisingMeta, denoising_attention_mask,
                                                  denoising_match_indices,
                                                  make_denoising_queries)


def _targets(counts, seed=0, size=0.1):
    gen = torch.Generator().manual_seed(seed)
    return [dict(labels=torch.randint(0, 5, (n,), generator=gen),
                 boxes=torch.cat([torch.rand(n, 2, generator=gen) * 0.4 + 0.3,
                                  torch.full((n, 2), size)], dim=1)) for n in counts]


def _onehot_embedding(num_classes):
    """An embedding whose rows are one-hot, so a query's label is its argmax."""
    embedding = nn.Embedding(num_classes, num_classes)
    with torch.no_grad():
        embedding.weight.copy_(torch.eye(num_classes))
    return embedding


def test_layout_groups_and_padding():
    targets = _targets([3, 0, 1])
    labels_q, boxes_q, meta = make_denoising_queries(
        targets, label_embedding=nn.Embedding(5, 8), num_classes=5, num_dn=10,
        label_noise_ratio=0.0, box_noise_scale=0.0)
    assert meta == DenoisingMeta(num_groups=3, group_size=6, num_dn_queries=18)  # 10 // 3 = 3
    assert labels_q.shape == (3, 18, 8) and boxes_q.shape == (3, 18, 4)
    used = (labels_q != 0).any(-1)  # (B, Ndn): which slots hold a query
    for g in range(3):
        for half in range(2):  # positives, then negatives
            base = g * 6 + half * 3
            assert used[0, base:base + 3].all()
            assert not used[1].any()
            assert used[2, base] and not used[2, base + 1:base + 3].any()
    # padding keeps a zero box logit
    assert (boxes_q[~used] == 0).all()


def test_group_count_rules():
    embedding = nn.Embedding(5, 4)
    assert make_denoising_queries(_targets([0, 0]), label_embedding=embedding,
                                  num_classes=5) is None
    _, _, meta = make_denoising_queries(_targets([150]), label_embedding=embedding,
                                        num_classes=5, num_dn=100)
    assert meta.num_groups == 1 and meta.group_size == 300
    _, _, meta = make_denoising_queries(_targets([7, 2]), label_embedding=embedding,
                                        num_classes=5, num_dn=100)
    assert meta.num_groups == 14 and meta.num_dn_queries == 14 * 14


def test_positive_boxes_within_noise_bounds_and_negatives_outside():
    torch.manual_seed(0)
    scale = 0.8
    targets = _targets([20, 13], size=0.1)  # small central boxes: no clamping at the border
    _, boxes_q, meta = make_denoising_queries(
        targets, label_embedding=nn.Embedding(5, 4), num_classes=5, num_dn=100,
        label_noise_ratio=0.0, box_noise_scale=scale)
    noised = boxes_q.sigmoid()
    bound = scale * 0.1 / 2  # scale * (w/2), the same for every corner here
    checked_neg = 0
    for i, t in enumerate(targets):
        truth = t['boxes']
        for g in range(meta.num_groups):
            start = g * meta.group_size
            pos = noised[i, start:start + len(truth)]
            corners = torch.cat([pos[:, :2] - pos[:, 2:] / 2, pos[:, :2] + pos[:, 2:] / 2], 1)
            tcorners = torch.cat([truth[:, :2] - truth[:, 2:] / 2,
                                  truth[:, :2] + truth[:, 2:] / 2], 1)
            # 1e-3: a positive may collapse to zero size, whose logit is clamped at 1e-3
            assert ((corners - tcorners).abs() <= bound + 1e-3).all()
            neg = noised[i, start + meta.max_targets:start + meta.max_targets + len(truth)]
            keep = (neg[:, 2:] > 0.01).all(1)  # negatives whose corners did not cross
            ncorners = torch.cat([neg[:, :2] - neg[:, 2:] / 2, neg[:, :2] + neg[:, 2:] / 2], 1)
            delta = (ncorners - tcorners).abs()[keep]
            assert ((delta >= bound - 1e-5) & (delta <= 2 * bound + 1e-5)).all()
            checked_neg += int(keep.sum())
    assert checked_neg > 50


def test_label_noise_rate():
    torch.manual_seed(0)
    num_classes = 1000
    targets = [dict(labels=torch.randint(0, num_classes, (100,)), boxes=torch.full((100, 4), .5))]
    labels_q, _, meta = make_denoising_queries(
        targets, label_embedding=_onehot_embedding(num_classes), num_classes=num_classes,
        num_dn=5000, label_noise_ratio=0.4, box_noise_scale=0.0)
    # (1, G*2M, C) -> (G*2, M) labels, every copy against the true labels
    noised = labels_q[0].argmax(-1).view(meta.num_groups * 2, meta.max_targets)
    changed = (noised != targets[0]['labels']).float().mean().item()
    assert changed == pytest.approx(0.2 * (1 - 1 / num_classes), abs=0.02)  # half the ratio


def test_match_indices_point_at_own_target():
    targets = _targets([4, 0, 2], seed=3)
    labels_q, boxes_q, meta = make_denoising_queries(
        targets, label_embedding=_onehot_embedding(5), num_classes=5, num_dn=9,
        label_noise_ratio=0.0, box_noise_scale=0.0)
    indices = denoising_match_indices(meta, targets)
    for i, (t, (query_idx, target_idx)) in enumerate(zip(targets, indices)):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == meta.num_groups * len(t['labels'])
        # noise off: a positive query is an exact copy of the target it is matched to
        torch.testing.assert_close(labels_q[i, query_idx].argmax(-1), t['labels'][target_idx])
        torch.testing.assert_close(boxes_q[i, query_idx].sigmoid(), t['boxes'][target_idx])
        # every positive lies in the first half of its group
        assert ((query_idx % meta.group_size) < meta.max_targets).all()
    with pytest.raises(ValueError, match='image 0 has 5 targets'):
        denoising_match_indices(meta, _targets([5]))


def test_attention_mask():
    meta = DenoisingMeta(num_groups=3, group_size=4, num_dn_queries=12)
    num_queries = 5
    mask = denoising_attention_mask(meta, num_queries, 'cpu')
    assert mask.shape == (17, 17) and mask.dtype == torch.bool
    for row in range(17):
        for col in range(17):
            row_dn, col_dn = row < 12, col < 12
            if row_dn and col_dn:
                blocked = row // 4 != col // 4  # groups see only themselves
            elif not row_dn and col_dn:
                blocked = True  # matching queries see no denoising query
            else:
                blocked = False  # everyone sees the matching queries
            assert bool(mask[row, col]) == blocked, (row, col)


def test_gradient_reaches_label_embedding():
    embedding = nn.Embedding(5, 8)
    labels_q, _, _ = make_denoising_queries(_targets([2, 1]), label_embedding=embedding,
                                            num_classes=5)
    labels_q.sum().backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='num_dn_queries'):
        DenoisingMeta(num_groups=2, group_size=4, num_dn_queries=7)
    with pytest.raises(ValueError, match='fewer than num_classes'):
        make_denoising_queries(_targets([1]), label_embedding=nn.Embedding(3, 4), num_classes=5)
