"""Prompt sampling for the promptable segmenter: points in masks, noisy boxes within their bound,
corrective clicks in the right error region with the right label, the deterministic click at the
distance-transform maximum, and segment-anything-fast's first point."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.ops import masks_to_boxes

from densevit.models.tasks.sam_prompts import (NO_CLICK, center_point, center_points,
                                               farthest_error_clicks, noisy_boxes,
                                               random_error_clicks, random_points_in_masks)


def _random_masks(n: int = 6, size: tuple[int, int] = (40, 50), seed: int = 0) -> torch.Tensor:
    """n blobs of random size and place (each non-empty, some thin)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros((n, *size), dtype=torch.bool)
    for i in range(n):
        y0, x0 = torch.randint(0, size[0] - 2, (1,), generator=g), torch.randint(
            0, size[1] - 2, (1,), generator=g)
        h, w = torch.randint(1, 20, (2,), generator=g)
        masks[i, y0:y0 + h, x0:x0 + w] = True
        masks[i] &= torch.rand(size, generator=g) < 0.8  # holes
        masks[i, y0, x0] = True
    return masks


def _at(masks: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """masks[i] at pixel xy[i] = (x, y)."""
    x, y = xy.long().unbind(-1)
    return masks[torch.arange(len(masks)), y, x]


def test_points_fall_inside_their_masks():
    masks = _random_masks(n=8)
    for seed in range(20):
        points = random_points_in_masks(masks, torch.Generator().manual_seed(seed))
        assert points.shape == (8, 2)
        assert _at(masks, points).all()
    # a one-pixel mask gives that pixel
    single = torch.zeros((1, 5, 7), dtype=torch.bool)
    single[0, 3, 6] = True
    assert random_points_in_masks(single).tolist() == [[6.0, 3.0]]


def test_points_are_uniform_over_the_mask():
    mask = torch.zeros((1, 4, 4), dtype=torch.bool)
    mask[0, 1, :] = True  # four pixels
    g = torch.Generator().manual_seed(0)
    xs = torch.cat([random_points_in_masks(mask, g)[:, 0] for _ in range(2000)])
    counts = torch.bincount(xs.long(), minlength=4).float() / 2000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.04), counts


def test_points_in_an_empty_mask_raise():
    masks = torch.zeros((2, 4, 4), dtype=torch.bool)
    masks[0, 1, 1] = True
    with pytest.raises(ValueError, match=r'masks \[1\] are empty'):
        random_points_in_masks(masks)


def test_boxes_stay_within_the_noise_bound_and_the_image():
    h, w = 60, 90
    boxes = torch.tensor([[10.0, 5.0, 40.0, 25.0],  # 30 x 20: bounds 3 and 2 px
                          [0.0, 0.0, 89.0, 59.0],  # the whole image: clipped
                          [2.0, 1.0, 3.0, 2.0],  # tiny
                          [-20.0, -20.0, 400.0, 400.0]])  # 420 px sides: capped at 20 px
    bound = torch.tensor([[3.0, 2.0, 3.0, 2.0], [8.9, 5.9, 8.9, 5.9], [0.1, 0.1, 0.1, 0.1],
                          [20.0, 20.0, 20.0, 20.0]])
    moved_any = torch.zeros(4, dtype=torch.bool)
    largest = torch.zeros(4)
    for seed in range(50):
        out = noisy_boxes(boxes, (h, w), generator=torch.Generator().manual_seed(seed))
        clipped = torch.minimum(boxes.clamp(min=0), torch.tensor([w - 1, h - 1, w - 1, h - 1.0]))
        # clipping only brings a coordinate closer to the clipped original
        assert ((out - clipped).abs() <= bound + 1e-5).all(), (out, boxes)
        assert (out[:, 0::2] >= 0).all() and (out[:, 0::2] <= w - 1).all()
        assert (out[:, 1::2] >= 0).all() and (out[:, 1::2] <= h - 1).all()
        assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()
        moved_any |= (out != clipped).any(1)
        largest = torch.maximum(largest, (out - boxes)[0].abs())
    assert moved_any[:3].all()  # the last box lies beyond the image: clipped back every time
    assert (largest > 0.8 * bound[0]).all()  # the noise spans its range


def test_boxes_are_reproducible_from_the_generator():
    boxes = torch.tensor([[10.0, 5.0, 40.0, 25.0]])
    first = noisy_boxes(boxes, (60, 90), generator=torch.Generator().manual_seed(3))
    again = noisy_boxes(boxes, (60, 90), generator=torch.Generator().manual_seed(3))
    other = noisy_boxes(boxes, (60, 90), generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def _errors_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Three instances on 20 x 20: a missed part larger than the extra part (-> positive), an
    extra part larger than the missed part (-> negative), and a perfect prediction."""
    gt = torch.zeros((3, 20, 20), dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, 2:12, 2:12] = True
    pred[0, 2:12, 2:6] = True  # misses 60 px
    pred[0, 15:17, 15:17] = True  # adds 4 px
    gt[1, 5:8, 5:8] = True
    pred[1, 5:8, 5:7] = True  # misses 3 px
    pred[1, 10:18, 10:18] = True  # adds 64 px
    gt[2, 4:9, 4:9] = True
    pred[2] = gt[2]
    return pred, gt


def test_random_click_lands_in_the_larger_error_region_with_its_label():
    pred, gt = _errors_case()
    fn, fp = gt & ~pred, pred & ~gt
    for seed in range(20):
        coords, labels = random_error_clicks(pred, gt, torch.Generator().manual_seed(seed))
        assert labels.tolist() == [1, 0, NO_CLICK]
        assert _at(fn, coords)[0] and _at(fp, coords)[1]


def test_farthest_click_is_the_distance_transform_maximum():
    pred, gt = _errors_case()
    coords, labels = farthest_error_clicks(pred, gt)
    assert labels.tolist() == [1, 0, NO_CLICK]
    # instance 0: the missed part is rows 2..11, columns 6..11 (10 x 6), the prediction's
    # border on the left; its centre-most pixels are 3 px from the nearest non-error pixel
    fn0 = (gt[0] & ~pred[0]).numpy()
    dt = ndimage.distance_transform_edt(np.pad(fn0, 1))[1:-1, 1:-1]
    assert dt.max() == 3.0
    row, col = np.argwhere(dt == dt.max())[0]  # the first in row-major order
    assert (row, col) == (4, 8)
    assert coords[0].tolist() == [8.0, 4.0]
    # instance 1: the extra 8 x 8 square at rows/cols 10..17, its centre pixels 4 px deep
    fp1 = (pred[1] & ~gt[1]).numpy()
    dt = ndimage.distance_transform_edt(np.pad(fp1, 1))[1:-1, 1:-1]
    row, col = np.argwhere(dt == dt.max())[0]
    assert dt.max() == 4.0 and (row, col) == (13, 13)
    assert coords[1].tolist() == [13.0, 13.0]


def test_farthest_click_counts_the_image_border_as_boundary():
    # a missed region touching the image edge: its deepest pixel is measured to the border too
    gt = torch.zeros((1, 6, 10), dtype=torch.bool)
    gt[0, :, 5:] = True  # columns 5..9, all rows
    pred = torch.zeros_like(gt)
    coords, labels = farthest_error_clicks(pred, gt)
    assert labels.tolist() == [1]
    # 6 rows x 5 columns touching the top, bottom and right edges: depth 3 at rows 2..3,
    # column 7; the first is row 2
    assert coords.tolist() == [[7.0, 2.0]]


def _sam_fast_reference(mask: np.ndarray) -> tuple[int, int]:
    """A literal pixel-by-pixel restatement of segment-anything-fast's point rule, for checking
    the vectorised one."""
    cy, cx = ndimage.center_of_mass(mask)
    r, c = int(np.round(cy)), int(np.round(cx))
    if mask[r, c]:
        return c, r
    h, w = mask.shape
    best, best_xy = -np.inf, None
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            runs = []
            for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1)):
                k, rr, cc = 0, r + dr, c + dc
                while 0 <= rr < h and 0 <= cc < w and mask[rr, cc]:
                    k, rr, cc = k + 1, rr + dr, cc + dc
                runs.append(k)
            if min(runs) > best:
                best, best_xy = min(runs), (c, r)
            if best >= 20:
                break
    return best_xy


def test_sam_fast_point_is_the_centre_of_mass_when_inside():
    mask = np.zeros((9, 12), dtype=bool)
    mask[2:7, 3:10] = True  # centre of mass (4, 6)
    assert center_point(mask) == (6, 4)
    # halves round to even, as numpy rounds: rows 2..5 -> 3.5 -> 4; columns 3..8 -> 5.5 -> 6
    mask = np.zeros((9, 12), dtype=bool)
    mask[2:6, 3:9] = True
    assert center_point(mask) == (6, 4)


def test_sam_fast_point_of_a_hand_made_ring():
    # a square ring, 2 px thick, around a 5 x 5 hole: the centre of mass (5, 5) is in the hole.
    # No ring pixel has two mask pixels in all four directions, so the best shortest run is 1;
    # row 1 has nothing above and (row 2, col 1) nothing to its left, so the first pixel with
    # 1 in row-major order is (row 2, col 2): up 1, left 1, down 7, right 7
    mask = np.zeros((11, 11), dtype=bool)
    mask[1:10, 1:10] = True
    mask[3:8, 3:8] = False
    assert not mask[5, 5]
    assert center_point(mask) == (2, 2)
    assert center_point(mask) == _sam_fast_reference(mask)


def test_sam_fast_point_matches_the_literal_rule_on_odd_shapes():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        h, w = rng.integers(20, 70, 2)
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = np.hypot(yy - cy, xx - cx)
        r_in, width = rng.uniform(2, 25), rng.uniform(2, 30)
        mask = (r >= r_in) & (r < r_in + width)  # rings and crescents (cut by the border)
        mask &= ~((xx > cx) & (yy > cy + rng.uniform(-5, 5)))  # cut a quadrant away
        if not mask.any():
            continue
        assert center_point(mask) == _sam_fast_reference(mask)
        checked += 1
    assert checked > 40


def test_sam_fast_early_stop_after_a_20_px_run():
    # a thick U: the centre of mass falls in the notch; the first pixel whose shortest run
    # reaches 20 ends the search within its row, and later rows only test their first pixel
    mask = np.zeros((80, 80), dtype=bool)
    mask[0:80, 0:30] = True
    mask[0:80, 50:80] = True
    mask[55:80, 30:50] = True
    cy, cx = ndimage.center_of_mass(mask)
    assert not mask[int(np.round(cy)), int(np.round(cx))]
    # in the bars a pixel's left and right runs add up to 29, so the best is 14 (first at row
    # 14, column 14) until row 55, where the bridge starts: (row 55, column 20) has runs up 55,
    # down 24, left 20, right 59 and ends the search; without the early stop (row 55, column 29)
    # would win with 24
    assert center_point(mask) == (20, 55)
    assert center_point(mask) == _sam_fast_reference(mask)


def test_center_points_batch_and_masks_to_boxes_agree_on_coordinates():
    masks = _random_masks(n=5)
    points = center_points(masks)
    assert points.shape == (5, 2) and _at(masks, points).all()
    boxes = masks_to_boxes(masks)  # x1, y1, x2, y2 in the same pixel-index frame
    assert ((points >= boxes[:, :2]) & (points <= boxes[:, 2:])).all()
