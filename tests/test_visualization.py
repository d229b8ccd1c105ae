"""densevit.visualization: the pixels each drawing function writes, against hand-computed
values (blends, outlines, legend entries, prompt colours, panel layout)."""
import numpy as np
import pytest

from densevit.visualization import (NEGATIVE_COLOR, POSITIVE_COLOR, add_legend, draw_instances,
                                    draw_masks, draw_prompts, draw_sem_seg, legend_entries,
                                    side_by_side)

GREY = np.full((40, 60, 3), 100, np.uint8)
PALETTE = [(255, 0, 0), (0, 0, 255)]


def test_masks_fill_half_and_outline_in_full_colour():
    mask = np.zeros((1, 40, 60), bool)
    mask[0, 10:20, 10:30] = True
    out = draw_masks(GREY, mask, [(200, 0, 50)])
    assert tuple(out[15, 20]) == (150, 50, 75)          # (100 + c) / 2 inside
    assert tuple(out[10, 20]) == tuple(out[15, 10]) == (200, 0, 50)  # its edge
    assert tuple(out[5, 5]) == (100, 100, 100) and (GREY == 100).all()  # outside; input kept


def test_instances_below_the_threshold_are_left_out():
    boxes = np.array([[5, 8, 25, 30], [35, 8, 55, 30]], np.float64)
    out = draw_instances(GREY, boxes, np.array([0, 1]), np.array([0.9, 0.2]), ['cat', 'dog'],
                         PALETTE, score_thr=0.5)
    assert tuple(out[20, 5]) == PALETTE[0]  # left edge of the kept box
    assert (out[9:, 33:] == 100).all()      # the low-scoring box is not drawn
    assert (out[:8, 5:30] == PALETTE[0]).all(axis=2).sum() > 20  # its "cat 0.90" label


def test_semantic_map_blends_and_leaves_ignored_pixels():
    labels = np.full((40, 60), 255)
    labels[:, :40] = 1
    labels[:10, :10] = 0
    out = draw_sem_seg(GREY, labels, PALETTE)
    assert tuple(out[20, 20]) == (50, 50, 178) and tuple(out[5, 5]) == (178, 50, 50)
    assert (out[:, 40:] == 100).all()
    assert legend_entries([labels], ['a', 'b'], PALETTE) == [('b', PALETTE[1]), ('a', PALETTE[0])]
    with_legend = draw_sem_seg(GREY, labels, PALETTE, classes=['a', 'b'])
    assert with_legend.shape[0] == 40 and with_legend.shape[1] > 60
    np.testing.assert_array_equal(with_legend[:, :60], out)
    assert add_legend(GREY, []).shape == GREY.shape


def test_prompts_positive_green_negative_red():
    out = draw_prompts(GREY, np.array([[10, 10], [40, 20]]), np.array([1, 0]),
                       np.array([[2, 2, 58, 38]]))
    assert tuple(out[10, 10]) == POSITIVE_COLOR and tuple(out[20, 40]) == NEGATIVE_COLOR
    assert tuple(out[20, 2]) != (100, 100, 100)  # the box's left edge


def test_side_by_side_widths_add_up_and_titles_go_above():
    tall = np.zeros((50, 30, 3), np.uint8)
    out = side_by_side([GREY, tall], ['a long title that wraps', 'b'], gap=4)
    assert out.shape[1] == 60 + 4 + 30
    header = out.shape[0] - 50
    assert header > 0
    np.testing.assert_array_equal(out[header:header + 40, :60], GREY)
    np.testing.assert_array_equal(out[header:, 64:], tall)
    with pytest.raises(ValueError, match='2 panels need as many titles'):
        side_by_side([GREY, tall], ['a'])
