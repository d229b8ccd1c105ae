"""Drawing predictions and annotations on images: boxes with "class score" labels, instance
masks, semantic maps with a legend, SAM masks with their prompts, and panels side by side.

Every function takes an RGB uint8 image (H, W, 3) and returns a new one; the input is never
changed. Colours come from a dataset's ``palette`` (one RGB triple per class) where there is one,
else from matplotlib's ``tab20`` colormap by index. Text uses PIL's default font, scaled with the
image so labels stay legible on 64 px stand-in images and on 1024 px photos alike.
"""
from __future__ import annotations

from typing import Sequence

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ['display_factor', 'enlarge', 'index_color', 'draw_boxes', 'draw_masks', 'draw_instances', 'draw_sem_seg',
           'legend_entries', 'draw_legend', 'add_legend', 'draw_prompts', 'draw_sam',
           'side_by_side', 'POSITIVE_COLOR', 'NEGATIVE_COLOR', 'PROMPT_BOX_COLOR']

Color = tuple[int, int, int]
POSITIVE_COLOR: Color = (0, 200, 0)     # foreground points (label 1)
NEGATIVE_COLOR: Color = (230, 0, 0)     # background points (label 0)
PROMPT_BOX_COLOR: Color = (255, 200, 0)


def _check_image(image: np.ndarray, name: str = 'image') -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'{name} must be an RGB uint8 array (H, W, 3); got {image.dtype} '
                         f'{image.shape}')
    return image


def display_factor(height: int, width: int, min_side: int) -> int:
    """The integer factor that brings an image's shorter side to at least ``min_side`` pixels
    (1 when it is there already, or ``min_side`` is 0): pictures of small images are drawn on an
    enlarged copy, so lines and labels keep their width instead of covering the objects."""
    if min_side <= 0:
        return 1
    return max(1, math.ceil(min_side / max(1, min(height, width))))


def enlarge(array: np.ndarray, factor: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """``array`` repeated ``factor`` times along ``axes`` (nearest-neighbour upscaling of an
    image (H, W, 3), a label map (H, W) or masks (N, H, W) with ``axes=(1, 2)``)."""
    if factor == 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=axes[0]), factor, axis=axes[1])


def index_color(index: int, palette: Sequence[Sequence[int]] | None = None) -> Color:
    """The colour of class (or mask) ``index``: ``palette[index]`` when the palette has it, else
    matplotlib's ``tab20`` colour ``index % 20``."""
    index = int(index)
    if palette is not None and 0 <= index < len(palette):
        return tuple(int(c) for c in palette[index])[:3]
    from matplotlib import colormaps
    r, g, b, _ = colormaps['tab20'](index % 20)
    return round(r * 255), round(g * 255), round(b * 255)


def _font_size(height: int, width: int) -> int:
    """Text height in pixels for an image of this size: about 1/28 of the shorter side."""
    return int(np.clip(round(min(height, width) / 28), 9, 22))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _text_color(background: Color) -> Color:
    """Black or white, whichever reads better on ``background`` (ITU-R 601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: Color,
           font: ImageFont.ImageFont, bounds: tuple[int, int]) -> None:
    """``text`` on a filled box of ``color`` whose bottom-left is at ``xy`` (above a box's top
    edge), moved inside the image (``bounds`` = (W, H)) when it would leave it."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 2
    x = min(max(xy[0], 0), max(bounds[0] - w, 0))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    y = min(y, max(bounds[1] - h, 0))
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=color)
    draw.text((x + 2 - left, y + 1 - top), text, fill=_text_color(color), font=font)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, colors: Sequence[Color],
               texts: Sequence[str] | None = None, width: int | None = None) -> np.ndarray:
    """Outline boxes (N, 4) (x1, y1, x2, y2 in pixels) in ``colors`` (one per box), each with
    its text (``"person 0.87"``) on a filled label above its top-left corner."""
    image = _check_image(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(colors) != len(boxes) or (texts is not None and len(texts) != len(boxes)):
        raise ValueError(f'{len(boxes)} boxes need as many colors and texts; got {len(colors)} '
                         f'colors and {None if texts is None else len(texts)} texts')
    h, w = image.shape[:2]
    width = width or max(1, round(min(h, w) / 200))
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box, color in zip(boxes, colors):
        x1, y1, x2, y2 = box
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=tuple(color), width=width)
    if texts is not None:
        font = _font(_font_size(h, w))
        for box, color, text in zip(boxes, colors, texts):
            if text:
                _label(draw, (float(box[0]), float(box[1])), text, tuple(color), font, (w, h))
    return np.asarray(canvas)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (H, W) bool with a 4-neighbour outside it (the image edge counts as
    inside, so a mask touching the edge is not outlined along it)."""
    padded = np.pad(mask, 1, mode='edge')
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~interior


def draw_masks(image: np.ndarray, masks: np.ndarray, colors: Sequence[Color],
               alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """Fill masks (N, H, W) bool translucently (``alpha`` of the colour over the image), later
    masks over earlier ones, then outline each in its full colour."""
    image = _check_image(image)
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f'masks must be (N, H, W) with (H, W) = {image.shape[:2]} of the image; '
                         f'got {masks.shape}')
    if len(colors) != len(masks):
        raise ValueError(f'{len(masks)} masks need as many colors; got {len(colors)}')
    out = image.astype(np.float32)
    for mask, color in zip(masks, colors):
        out[mask] = out[mask] * (1 - alpha) + np.asarray(color, np.float32) * alpha
    out = out.round().astype(np.uint8)
    if contour:
        for mask, color in zip(masks, colors):
            out[_boundary(mask)] = color
    return out


def draw_instances(image: np.ndarray, bboxes: np.ndarray, labels: np.ndarray,
                   scores: np.ndarray | None, classes: Sequence[str],
                   palette: Sequence[Sequence[int]] | None = None,
                   masks: np.ndarray | None = None, score_thr: float = 0.3) -> np.ndarray:
    """Detections (or annotations) on an image: masks (N, H, W) when given, then boxes (N, 4)
    xyxy labelled ``"class score"`` (``"class"`` when ``scores`` is None), coloured by class.
    Instances scoring below ``score_thr`` are left out; the highest-scoring is drawn last, on top.
    """
    bboxes = np.asarray(bboxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if scores is None:
        order = np.arange(len(labels))
    else:
        scores = np.asarray(scores, np.float64).reshape(-1)
        order = np.argsort(scores, kind='stable')
        order = order[scores[order] >= score_thr]
    colors = [index_color(label, palette) for label in labels[order]]

    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else str(label)

    if scores is None:
        texts = [name(label) for label in labels[order]]
    else:
        texts = [f'{name(label)} {score:.2f}' for label, score in zip(labels[order],
                                                                      scores[order])]
    out = _check_image(image)
    if masks is not None and len(order):
        out = draw_masks(out, np.asarray(masks)[order], colors)
    return draw_boxes(out, bboxes[order], colors, texts)


def draw_sem_seg(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]] | None,
                 alpha: float = 0.5, ignore_index: int = 255,
                 classes: Sequence[str] | None = None) -> np.ndarray:
    """Blend class colours over an image; ``labels`` (H, W) are class indices, ``ignore_index``
    pixels keep the image. With ``classes``, a legend of the classes present (largest first)
    is added on the right (see :func:`add_legend`)."""
    image = _check_image(image)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != image.shape[:2]:
        raise ValueError(f'labels of shape {labels.shape} do not match the image '
                         f'{image.shape[:2]}')
    present = [int(v) for v in np.unique(labels) if v != ignore_index and v >= 0]
    lookup = np.zeros((max(present, default=0) + 1, 3), np.float32)
    for label in present:
        lookup[label] = index_color(label, palette)
    keep = (labels == ignore_index) | (labels < 0)
    overlay = lookup[np.where(keep, 0, labels)]
    blended = image.astype(np.float32) * (1 - alpha) + overlay * alpha
    blended[keep] = image[keep]
    out = blended.round().astype(np.uint8)
    if classes is not None:
        out = add_legend(out, legend_entries([labels], classes, palette, ignore_index))
    return out


def legend_entries(label_maps: Sequence[np.ndarray], classes: Sequence[str],
                   palette: Sequence[Sequence[int]] | None,
                   ignore_index: int = 255) -> list[tuple[str, Color]]:
    """(name, colour) of every class present in ``label_maps``, the largest area first."""
    counts: dict[int, int] = {}
    for labels in label_maps:
        values, numbers = np.unique(np.asarray(labels), return_counts=True)
        for value, number in zip(values.tolist(), numbers.tolist()):
            if value != ignore_index and value >= 0:
                counts[value] = counts.get(value, 0) + number
    ranked = sorted(counts, key=lambda label: (-counts[label], label))
    return [(classes[label] if label < len(classes) else str(label), index_color(label, palette))
            for label in ranked]


def draw_legend(entries: Sequence[tuple[str, Color]], height: int,
                font_size: int | None = None) -> np.ndarray:
    """A white panel ``height`` pixels tall listing (name, colour) entries as a swatch and the
    name, in as many columns as the height needs."""
    size = font_size or _font_size(height, height)
    font = _font(size)
    row = size + 6
    rows = max(1, (height - 4) // row)
    columns = [entries[i:i + rows] for i in range(0, len(entries), rows)] or [[]]
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    widths = [max([measure.textbbox((0, 0), name, font=font)[2] for name, _ in column] or [0])
              for column in columns]
    swatch = size
    column_widths = [swatch + 6 + w + 8 for w in widths]
    panel = Image.new('RGB', (max(sum(column_widths), 1), height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    x = 4
    for column, column_width in zip(columns, column_widths):
        for k, (name, color) in enumerate(column):
            y = 4 + k * row
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(color),
                           outline=(0, 0, 0))
            top = draw.textbbox((0, 0), name, font=font)[1]
            draw.text((x + swatch + 4, y - top), name, fill=(0, 0, 0), font=font)
        x += column_width
    return np.asarray(panel)


def add_legend(image: np.ndarray, entries: Sequence[tuple[str, Color]]) -> np.ndarray:
    """``image`` with a :func:`draw_legend` panel of ``entries`` on its right (the image's
    height); the image itself unchanged. No entries: the image as it is."""
    image = _check_image(image)
    if not entries:
        return image.copy()
    h, w = image.shape[:2]
    panel = draw_legend(entries, h, _font_size(h, w))
    return np.concatenate([image, panel], axis=1)


def draw_prompts(image: np.ndarray, points: np.ndarray | None = None,
                 point_labels: np.ndarray | None = None,
                 boxes: np.ndarray | None = None) -> np.ndarray:
    """SAM prompts: points (P, 2) (x, y) as discs, foreground (label 1) green and background
    (label 0) red, each ringed in white; boxes (N, 4) xyxy outlined in yellow."""
    image = _check_image(image)
    h, w = image.shape[:2]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    if boxes is not None:
        for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
            draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=PROMPT_BOX_COLOR,
                           width=max(1, round(min(h, w) / 150)))
    if points is not None:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        labels = (np.ones(len(points), np.int64) if point_labels is None
                  else np.asarray(point_labels).reshape(-1))
        if len(labels) != len(points):
            raise ValueError(f'{len(points)} points need as many labels; got {len(labels)}')
        radius = max(2.0, min(h, w) / 60)
        for (x, y), label in zip(points, labels):
            color = POSITIVE_COLOR if label > 0 else NEGATIVE_COLOR
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color,
                         outline=(255, 255, 255), width=max(1, round(radius / 3)))
    return np.asarray(canvas)


def draw_sam(image: np.ndarray, masks: np.ndarray, scores: np.ndarray | None = None,
             points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
             boxes: np.ndarray | None = None) -> np.ndarray:
    """SAM masks (N, H, W) bool, one ``tab20`` colour each, with the prompts that made them on
    top (:func:`draw_prompts`) and, given ``scores`` (predicted IoUs), ``"IoU 0.91"`` at each
    mask's top-left."""
    image = _check_image(image)
    masks = np.asarray(masks).astype(bool).reshape(-1, *image.shape[:2])
    colors = [index_color(k) for k in range(len(masks))]
    out = draw_masks(image, masks, colors)
    out = draw_prompts(out, points, point_labels, boxes)
    if scores is not None:
        kept = [k for k in range(len(masks)) if masks[k].any()]
        corners = []
        for k in kept:
            ys, xs = np.nonzero(masks[k])
            corners.append((xs.min(), ys.min(), xs.min(), ys.min()))
        out = draw_boxes(out, np.asarray(corners, np.float64).reshape(-1, 4),
                         [colors[k] for k in kept],
                         [f'IoU {float(scores[k]):.2f}' for k in kept], width=1)
    return out


def _wrap(text: str, width: int, font: ImageFont.ImageFont, draw: ImageDraw.ImageDraw
          ) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels where words allow."""
    lines: list[str] = []
    for word in text.split(' '):
        if lines and draw.textlength(f'{lines[-1]} {word}', font=font) <= width:
            lines[-1] = f'{lines[-1]} {word}'
        else:
            lines.append(word)
    return lines


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                 gap: int = 4, background: Color = (255, 255, 255)) -> np.ndarray:
    """Panels (RGB uint8, any sizes) left to right, ``gap`` pixels apart, top-aligned on
    ``background``; with ``titles``, each panel's title above it, wrapped to the panel's width
    (and clipped there). The width is the sum of the panels' widths and the gaps."""
    panels = [_check_image(p, f'panels[{k}]') for k, p in enumerate(panels)]
    if not panels:
        raise ValueError('side_by_side needs at least one panel')
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f'{len(panels)} panels need as many titles; got {len(titles)}')
    size = _font_size(*max((p.shape[:2] for p in panels), key=min))
    font = _font(size)
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    lines = [_wrap(title, p.shape[1] - 4, font, measure) for p, title in
             zip(panels, titles)] if titles else [[] for _ in panels]
    row = size + 4
    header = row * max(len(t) for t in lines) + 4 if titles else 0
    height = header + max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = background
    x = 0
    for panel, title_lines in zip(panels, lines):
        w = panel.shape[1]
        canvas[header:header + panel.shape[0], x:x + w] = panel
        if title_lines:
            strip = Image.new('RGB', (w, header), tuple(background))
            draw = ImageDraw.Draw(strip)
            for k, line in enumerate(title_lines):
                top = draw.textbbox((0, 0), line, font=font)[1]
                draw.text((2, 2 + k * row - top), line, fill=(0, 0, 0), font=font)
            canvas[:header, x:x + w] = np.asarray(strip)
        x += w + gap
    return canvas
