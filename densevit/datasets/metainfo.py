"""Label spaces of the datasets densevit reads: COCO 2017 detection and ADE20K SceneParsing.

Written out as data: the 80 COCO 2017 categories with their real ids (1..90 with gaps) and
supercategories, and the 150 ADE20K SceneParsing class names in label order (label k in the
annotation PNGs is ``ADE20K_CLASSES[k - 1]``; 0 is unlabeled). Palettes are made here, one RGB
color per class, spread over hue so neighbouring labels look different.
"""
from __future__ import annotations

import colorsys

__all__ = ['COCO_CATEGORIES', 'COCO_CLASSES', 'COCO_CAT_IDS', 'COCO_PALETTE',
           'ADE20K_CLASSES', 'ADE20K_PALETTE', 'coco_metainfo', 'ade20k_metainfo', 'make_palette']

# (id, name, supercategory) of the 80 COCO 2017 detection categories.
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, 'person', 'person'), (2, 'bicycle', 'vehicle'), (3, 'car', 'vehicle'),
    (4, 'motorcycle', 'vehicle'), (5, 'airplane', 'vehicle'), (6, 'bus', 'vehicle'),
    (7, 'train', 'vehicle'), (8, 'truck', 'vehicle'), (9, 'boat', 'vehicle'),
    (10, 'traffic light', 'outdoor'), (11, 'fire hydrant', 'outdoor'), (13, 'stop sign', 'outdoor'),
    (14, 'parking meter', 'outdoor'), (15, 'bench', 'outdoor'), (16, 'bird', 'animal'),
    (17, 'cat', 'animal'), (18, 'dog', 'animal'), (19, 'horse', 'animal'), (20, 'sheep', 'animal'),
    (21, 'cow', 'animal'), (22, 'elephant', 'animal'), (23, 'bear', 'animal'),
    (24, 'zebra', 'animal'), (25, 'giraffe', 'animal'), (27, 'backpack', 'accessory'),
    (28, 'umbrella', 'accessory'), (31, 'handbag', 'accessory'), (32, 'tie', 'accessory'),
    (33, 'suitcase', 'accessory'), (34, 'frisbee', 'sports'), (35, 'skis', 'sports'),
    (36, 'snowboard', 'sports'), (37, 'sports ball', 'sports'), (38, 'kite', 'sports'),
    (39, 'baseball bat', 'sports'), (40, 'baseball glove', 'sports'),
    (41, 'skateboard', 'sports'), (42, 'surfboard', 'sports'), (43, 'tennis racket', 'sports'),
    (44, 'bottle', 'kitchen'), (46, 'wine glass', 'kitchen'), (47, 'cup', 'kitchen'),
    (48, 'fork', 'kitchen'), (49, 'knife', 'kitchen'), (50, 'spoon', 'kitchen'),
    (51, 'bowl', 'kitchen'), (52, 'banana', 'food'), (53, 'apple', 'food'),
    (54, 'sandwich', 'food'), (55, 'orange', 'food'), (56, 'broccoli', 'food'),
    (57, 'carrot', 'food'), (58, 'hot dog', 'food'), (59, 'pizza', 'food'), (60, 'donut', 'food'),
    (61, 'cake', 'food'), (62, 'chair', 'furniture'), (63, 'couch', 'furniture'),
    (64, 'potted plant', 'furniture'), (65, 'bed', 'furniture'), (67, 'dining table', 'furniture'),
    (70, 'toilet', 'furniture'), (72, 'tv', 'electronic'), (73, 'laptop', 'electronic'),
    (74, 'mouse', 'electronic'), (75, 'remote', 'electronic'), (76, 'keyboard', 'electronic'),
    (77, 'cell phone', 'electronic'), (78, 'microwave', 'appliance'), (79, 'oven', 'appliance'),
    (80, 'toaster', 'appliance'), (81, 'sink', 'appliance'), (82, 'refrigerator', 'appliance'),
    (84, 'book', 'indoor'), (85, 'clock', 'indoor'), (86, 'vase', 'indoor'),
    (87, 'scissors', 'indoor'), (88, 'teddy bear', 'indoor'), (89, 'hair drier', 'indoor'),
    (90, 'toothbrush', 'indoor'),
)
COCO_CLASSES: tuple[str, ...] = tuple(name for _, name, _ in COCO_CATEGORIES)
COCO_CAT_IDS: tuple[int, ...] = tuple(cat_id for cat_id, _, _ in COCO_CATEGORIES)

# The 150 ADE20K SceneParsing classes, label 1..150 in order (short names).
ADE20K_CLASSES: tuple[str, ...] = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
    'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
    'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing',
    'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink',
    'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
    'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
    'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth',
    'television receiver', 'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister',
    'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van', 'ship', 'fountain',
    'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool', 'barrel',
    'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step',
    'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen',
    'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan',
    'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
    'clock', 'flag',
)


def make_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """``num_classes`` RGB colors: hues stepped by the golden ratio so consecutive labels differ
    strongly, with saturation and value cycling over a few levels."""
    colors = []
    for i in range(num_classes):
        hue = (i * 0.6180339887) % 1.0
        sat = (0.95, 0.7, 0.5)[i % 3]
        val = (0.95, 0.75, 0.55, 0.85)[(i // 3) % 4]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colors)


COCO_PALETTE = make_palette(len(COCO_CLASSES))
ADE20K_PALETTE = make_palette(len(ADE20K_CLASSES))

assert len(COCO_CATEGORIES) == 80 and len(set(COCO_CAT_IDS)) == 80
assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150


def coco_metainfo() -> dict:
    """A fresh ``{'classes', 'cat_ids', 'palette'}`` dict for the full COCO label space."""
    return dict(classes=COCO_CLASSES, cat_ids=COCO_CAT_IDS, palette=COCO_PALETTE)


def ade20k_metainfo() -> dict:
    """A fresh ``{'classes', 'palette'}`` dict for the 150 ADE20K classes."""
    return dict(classes=ADE20K_CLASSES, palette=ADE20K_PALETTE)
