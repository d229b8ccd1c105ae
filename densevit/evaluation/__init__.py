"""Metrics: COCO box/mask AP and semantic-segmentation IoU."""
from . import coco_metric, iou_metric  # noqa: F401  (registers modules)
