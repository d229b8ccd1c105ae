"""Prompts for training and evaluating a promptable segmenter, sampled from ground-truth masks.

Pure functions on tensors. Masks are (N, H, W) bool, one per instance; points are (x, y) =
(column, row) pixel indices, the coordinates segment-anything's prompt encoder takes (it adds
half a pixel itself); boxes are (x1, y1, x2, y2). Random choices draw from a ``torch.Generator``
(``None``: torch's global generator) on the CPU, so the same seed gives the same prompts on any
device.

Training (SAM paper, appendix A, "Training algorithm"):
- ``random_points_in_masks``: the first prompt as a foreground point, uniform over the mask.
- ``noisy_boxes``: the first prompt as a box, the mask's box with each coordinate moved by up to
  10% of the box's side, at most 20 px, then clipped to the image.
- ``random_error_clicks``: a corrective click, uniform over the larger of the false-negative
  region (a positive click) and the false-positive region (a negative click).

Evaluation (deterministic):
- ``center_points``: segment-anything-fast's first point for its COCO val2017 mIoU.
- ``farthest_error_clicks``: the corrective click of interactive-segmentation evaluation (RITM's
  ``get_next_click``, SAM 2's ``sample_one_point_from_error_center``): the error pixel farthest
  from its error region's boundary.

A step whose prediction has no error gets no click: label -1, which segment-anything's prompt
encoder embeds as "not a point".
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ['random_points_in_masks', 'noisy_boxes', 'random_error_clicks',
           'farthest_error_clicks', 'center_points', 'center_point', 'error_regions',
           'NO_CLICK']

NO_CLICK = -1  # segment-anything's label of a padding point


def _check_masks(masks: torch.Tensor, name: str = 'masks') -> None:
    if masks.ndim != 3 or masks.dtype != torch.bool:
        raise ValueError(f'{name} must be (N, H, W) bool; got {tuple(masks.shape)} '
                         f'{masks.dtype}')


def _uniform_pixels(masks: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, 2) float (x, y) of one pixel per mask, uniform over its True
    pixels (for an empty mask, some pixel: callers mark those)."""
    n, h, w = masks.shape
    flat = masks.reshape(n, h * w)  # (N, H, W) -> (N, H*W)
    counts = flat.sum(1)
    u = torch.rand(n, generator=generator).to(masks.device)
    # the k-th True pixel, k uniform in [0, count): the first index whose running count > k
    k = torch.minimum((u * counts).long(), (counts - 1).clamp(min=0))
    running = flat.int().cumsum(1, dtype=torch.int32)  # (N, H*W) count of True so far
    index = torch.searchsorted(running, (k + 1).int()[:, None]).squeeze(1)
    index = index.clamp(max=h * w - 1)
    return torch.stack([index % w, index // w], dim=-1).float()


def random_points_in_masks(masks: torch.Tensor,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """One foreground point per mask, uniform over its pixels.

    Args:
        masks: (N, H, W) bool, none of them empty.
        generator: source of randomness (CPU).

    Returns:
        (N, 2) float (x, y) pixel indices, each inside its mask.
    """
    _check_masks(masks)
    empty = (~masks.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f'masks {empty} are empty: no point can be sampled inside them')
    return _uniform_pixels(masks, generator)


def noisy_boxes(boxes: torch.Tensor, image_size: tuple[int, int], *,
                generator: torch.Generator | None = None, noise: float = 0.1,
                max_noise: float = 20.0) -> torch.Tensor:
    """Boxes with each coordinate moved at random, as SAM trains with box prompts.

    x1 and x2 move by up to ``noise`` x the box width, y1 and y2 by up to ``noise`` x its height,
    and none by more than ``max_noise`` pixels (uniform in that range). The SAM paper draws the
    noise with a standard deviation of 10% of the side, to at most 20 px; the bounded uniform
    keeps that scale and makes the bound exact. With ``noise`` <= 0.5 the corners cannot cross.
    The result is clipped to the image, x to [0, w - 1] and y to [0, h - 1].

    Args:
        boxes: (N, 4) float (x1, y1, x2, y2) pixels.
        image_size: (h, w) of the image the boxes lie in.
        generator: source of randomness (CPU).
        noise: largest shift as a fraction of the box's side.
        max_noise: largest shift in pixels.

    Returns:
        (N, 4) float boxes.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f'boxes must be (N, 4) x1, y1, x2, y2; got {tuple(boxes.shape)}')
    if not 0 <= noise <= 0.5:
        raise ValueError(f'noise is a fraction of the box side in [0, 0.5]; got {noise}')
    boxes = boxes.float()
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # (N, 2) w, h
    bound = (noise * sides).clamp(max=max_noise).repeat(1, 2)  # (N, 4): w, h, w, h
    u = torch.rand(boxes.shape, generator=generator).to(boxes.device)
    moved = boxes + (2 * u - 1) * bound
    h, w = image_size
    limits = moved.new_tensor([w - 1, h - 1, w - 1, h - 1])
    return torch.minimum(moved.clamp(min=0), limits)


def error_regions(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(false negatives, false positives) of (N, H, W) bool predictions against gt masks."""
    _check_masks(pred, 'pred')
    _check_masks(gt, 'gt')
    if pred.shape != gt.shape:
        raise ValueError(f'pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape')
    return gt & ~pred, pred & ~gt


def random_error_clicks(pred: torch.Tensor, gt: torch.Tensor,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per instance, for training: uniform over the larger error region.

    The false-negative region (gt pixels the prediction misses) gives a positive click (label 1),
    the false-positive region a negative click (label 0); the larger one is chosen (a tie goes to
    the false negatives). An instance predicted without error gets no click (label -1).

    Args:
        pred: (N, H, W) bool predicted masks.
        gt: (N, H, W) bool ground-truth masks.
        generator: source of randomness (CPU).

    Returns:
        (coords (N, 2) float (x, y), labels (N,) int64 in {1, 0, -1}).
    """
    fn, fp = error_regions(pred, gt)
    fn_area, fp_area = fn.flatten(1).sum(1), fp.flatten(1).sum(1)
    positive = fn_area >= fp_area
    region = torch.where(positive[:, None, None], fn, fp)
    coords = _uniform_pixels(region, generator)
    labels = torch.where(positive, 1, 0)
    labels = torch.where(torch.maximum(fn_area, fp_area) > 0, labels, NO_CLICK)
    coords[labels == NO_CLICK] = 0.0
    return coords, labels.long()


def farthest_error_clicks(pred: torch.Tensor, gt: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per instance, deterministic, as interactive-segmentation evaluation
    places it (RITM's ``get_next_click``; SAM 2's ``sample_one_point_from_error_center``).

    The false-negative and false-positive regions are padded with one background pixel on each
    side (so the image border counts as boundary) and their Euclidean distance transforms taken
    (``scipy.ndimage.distance_transform_edt``). The click goes to the region whose deepest pixel
    lies farther from its boundary (positive for false negatives, negative for false positives;
    a tie goes to the false positives, as in RITM), at that pixel (the first in row-major order
    among equals). An instance predicted without error gets no click (label -1).

    Args:
        pred: (N, H, W) bool predicted masks.
        gt: (N, H, W) bool ground-truth masks.

    Returns:
        (coords (N, 2) float (x, y), labels (N,) int64 in {1, 0, -1}), on ``pred``'s device.
    """
    fn, fp = error_regions(pred, gt)
    coords = torch.zeros((len(pred), 2))
    labels = torch.full((len(pred),), NO_CLICK, dtype=torch.long)
    for i, (fn_i, fp_i) in enumerate(zip(fn.cpu().numpy(), fp.cpu().numpy())):
        # (H, W) -> (H + 2, W + 2) with a False border, then back
        fn_dt = ndimage.distance_transform_edt(np.pad(fn_i, 1))[1:-1, 1:-1]
        fp_dt = ndimage.distance_transform_edt(np.pad(fp_i, 1))[1:-1, 1:-1]
        fn_max, fp_max = fn_dt.max(), fp_dt.max()
        if max(fn_max, fp_max) == 0:
            continue
        positive = fn_max > fp_max
        dt = fn_dt if positive else fp_dt
        row, col = np.unravel_index(np.argmax(dt), dt.shape)
        coords[i] = torch.tensor([col, row], dtype=torch.float32)
        labels[i] = int(positive)
    return coords.to(pred.device), labels.to(pred.device)


# ----------------------------------------------------------------------- segment-anything-fast
# segment-anything-fast scores SAM on COCO val2017 with one foreground point per annotation,
# chosen by ``_get_center_point`` in its experiments/data.py (the rule below is the same choice,
# written anew): the mask's centre of mass, rounded to a pixel, if that pixel is in the mask;
# otherwise the mask pixel that maximises the shortest of its four straight runs of mask pixels
# (up, right, down, left, the pixel itself not counted), scanned in row-major order with
# strict improvement, and with that scan's early stop once a run of 20 px is found: from then on
# only the first mask pixel of each later row is looked at.

_GOOD_ENOUGH = 20  # segment-anything-fast's DISTANCE_GOOD_ENOUGH_THRESHOLD


def _runs(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) int: for each pixel, the shortest of the four runs of mask pixels
    that continue from it straight up, right, down and left (itself excluded)."""
    h, w = mask.shape
    m = mask.astype(np.int64)
    up, down = np.zeros_like(m), np.zeros_like(m)
    left, right = np.zeros_like(m), np.zeros_like(m)
    for r in range(1, h):  # mask pixels directly above, in an unbroken run
        up[r] = (up[r - 1] + 1) * m[r - 1]
    for r in range(h - 2, -1, -1):
        down[r] = (down[r + 1] + 1) * m[r + 1]
    for c in range(1, w):
        left[:, c] = (left[:, c - 1] + 1) * m[:, c - 1]
    for c in range(w - 2, -1, -1):
        right[:, c] = (right[:, c + 1] + 1) * m[:, c + 1]
    return np.minimum(np.minimum(up, down), np.minimum(left, right))


def center_point(mask: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """segment-anything-fast's first point of one non-empty (H, W) mask: (x, y) pixel indices."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f'center_point takes one non-empty (H, W) mask; got shape '
                         f'{mask.shape} with {int(mask.sum())} pixels')
    cy, cx = ndimage.center_of_mass(mask)
    row, col = int(np.round(cy)), int(np.round(cx))  # numpy rounds halves to even, as there
    if mask[row, col]:
        return col, row
    runs = _runs(mask)
    best, best_xy = -1, None
    for r in range(mask.shape[0]):
        cols = np.flatnonzero(mask[r])
        if not len(cols):
            continue
        if best >= _GOOD_ENOUGH:  # the scan stops a row after its first mask pixel
            cols = cols[:1]
        values = runs[r, cols]
        if best < _GOOD_ENOUGH:
            # pixels up to the first run of at least 20 px are scanned
            reached = np.flatnonzero(values >= _GOOD_ENOUGH)
            values = values[:reached[0] + 1] if len(reached) else values
        j = int(np.argmax(values))  # the first of equals: later ones do not strictly improve
        if values[j] > best:
            best, best_xy = int(values[j]), (int(cols[j]), r)
    return best_xy


def center_points(masks: torch.Tensor) -> torch.Tensor:
    """``center_point`` of each of (N, H, W) non-empty masks -> (N, 2) float (x, y)."""
    _check_masks(masks)
    points = [center_point(m) for m in masks.cpu().numpy()]
    return torch.tensor(points, dtype=torch.float32, device=masks.device).reshape(-1, 2)
